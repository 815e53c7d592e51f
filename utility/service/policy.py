"""Who asks the cluster manager, and every authorisation decision it makes (the one place).

Administrators manage hosts, pools, the blacklist, trust, subscriptions and tokens, and see every
VAP; a user sees and controls only their own VAPs. A VAP is identified by (owner, name), so two
users may each have a VAP `web`, and a user's start only ever names their own. Another user's VAP
does not exist for a user: every refusal about it is the very `NotFound` a VAP that never
existed gives (no owner, no existence leak). Everybody with a token may read the hosts, the
blacklist and the trust policy (users need them to know where and what they may run). Names of
internal callers (`local`, the Unix socket's; `auto-update`, the automatic updater's) are
reserved: no token may take them.
The facade (`utility.service.manager`) asks this object before each operation; routes and pages
never decide. Refusals are `Forbidden` or `NotFound`, turned into HTTP statuses only in
`utility.web.api`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from utility.adapters.store import VapRow
from utility.errors import Forbidden, NotFound, UtilityError

READABLE_BY_ALL = frozenset({"hosts", "blacklist", "trust"})
"""What any authenticated caller may read; every other read is for administrators."""

LOCAL = "local"
"""The caller over the Unix socket without a token (the daemon's owner, an administrator)."""
AUTO_UPDATE = "auto-update"
"""The automatic updater (publish events, polling)."""
RESERVED_NAMES = frozenset({LOCAL, AUTO_UPDATE})
"""Internal callers' names: a token with one of them would act as that caller (own its VAPs)."""
TOKEN_NAME = re.compile(r"[a-z][a-z0-9._-]{0,62}\Z")
"""What a token (user) name may be: lower case, starting with a letter, at most 63 characters."""


def not_running(path: str) -> NotFound:
    """The refusal for a VAP that is not running, or is somebody else's (the same text)."""
    return NotFound(f"{path} is not running")


def never_started(path: str) -> NotFound:
    """The refusal for a VAP that was never started, or is somebody else's (the same text)."""
    return NotFound(f"{path} was never started")


def no_vap_id(vap_id: int) -> NotFound:
    """The refusal for a VAP id that does not exist, or is somebody else's (the same text)."""
    return NotFound(f"no VAP with id {vap_id}")


def check_token_name(name: str) -> None:
    """Refuse a token name that is malformed or an internal caller's."""
    if not TOKEN_NAME.match(name):
        raise UtilityError(
            f"token name {name!r} is not allowed: use lower-case letters, digits, '.', '_' "
            "and '-', starting with a letter (at most 63 characters)"
        )
    if name in RESERVED_NAMES:
        internal = ", ".join(sorted(RESERVED_NAMES))
        raise UtilityError(f"token name {name!r} is reserved (internal callers: {internal})")


@dataclass(frozen=True)
class Caller:
    """Who asks: a token's name and role ("admin" or "user")."""

    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Policy:
    """The authorisation rules of one cluster manager."""

    def require_admin(self, caller: Caller, what: str) -> None:
        """Refuse unless `caller` administers; `what` completes "only administrators may"."""
        if not caller.admin:
            raise Forbidden(f"only administrators may {what} ({caller.name} is a user)")

    def require_read(self, caller: Caller, what: str) -> None:
        """Refuse a read of `what` (e.g. "pools") unless it is readable by all or `caller`
        administers."""
        if what not in READABLE_BY_ALL:
            self.require_admin(caller, f"see the {what}")

    def require_owner(self, caller: Caller, vap: VapRow | None, hidden: NotFound) -> VapRow:
        """`vap` if `caller` owns it (or administers); else `hidden`, the refusal a missing VAP
        gives, so a user learns nothing about another user's VAP."""
        if vap is None or not self.owns(caller, vap):
            raise hidden
        return vap

    @staticmethod
    def owns(caller: Caller, vap: VapRow) -> bool:
        """Whether `caller` may see and control `vap`."""
        return caller.admin or vap.owner == caller.name

    def visible(self, caller: Caller, vaps: Iterable[VapRow]) -> list[VapRow]:
        """The VAPs `caller` may see."""
        return [v for v in vaps if self.owns(caller, v)]
