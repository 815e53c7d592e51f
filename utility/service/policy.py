"""Who asks the cluster manager, and every authorisation decision it makes (the one place).

Administrators manage hosts, pools, the blacklist, trust, subscriptions and tokens, and see every
VAP; a user sees and controls only their own VAPs, and (with a user root) starts only CVL files
under it. Everybody with a token may read the hosts, the blacklist and the trust policy (users
need them to know where and what they may run). The facade (`utility.service.manager`) asks this
object before each operation; routes and pages never decide. Refusals are `Forbidden`, turned
into HTTP 403 only in `utility.web.api`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from utility.adapters.store import VapRow
from utility.errors import Forbidden

READABLE_BY_ALL = frozenset({"hosts", "blacklist", "trust"})
"""What any authenticated caller may read; every other read is for administrators."""


@dataclass(frozen=True)
class Caller:
    """Who asks: a token's name and role ("admin" or "user")."""

    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Policy:
    """The authorisation rules of one cluster manager.

    Args:
        user_root: when set, users (not administrators) may only start CVL files under it.
    """

    def __init__(self, user_root: Path | None = None) -> None:
        self.user_root = user_root.resolve() if user_root else None

    def require_admin(self, caller: Caller, what: str) -> None:
        """Refuse unless `caller` administers; `what` completes "only administrators may"."""
        if not caller.admin:
            raise Forbidden(f"only administrators may {what} ({caller.name} is a user)")

    def require_read(self, caller: Caller, what: str) -> None:
        """Refuse a read of `what` (e.g. "pools") unless it is readable by all or `caller`
        administers."""
        if what not in READABLE_BY_ALL:
            self.require_admin(caller, f"see the {what}")

    def require_owner(self, caller: Caller, vap: VapRow, what: str) -> None:
        """Refuse unless `caller` owns `vap` (or administers)."""
        if not self.owns(caller, vap):
            raise Forbidden(
                f"{caller.name} may not {what} {vap.cvl_path}: it belongs to another user"
            )

    def require_use(self, caller: Caller, path: Path) -> None:
        """Users may only run CVL files under the configured user root (if any)."""
        if caller.admin or self.user_root is None or path.is_relative_to(self.user_root):
            return
        raise Forbidden(f"{caller.name} may only start CVL files under {self.user_root}")

    @staticmethod
    def owns(caller: Caller, vap: VapRow) -> bool:
        """Whether `caller` may see and control `vap`."""
        return caller.admin or vap.owner == caller.name

    def visible(self, caller: Caller, vaps: Iterable[VapRow]) -> list[VapRow]:
        """The VAPs `caller` may see."""
        return [v for v in vaps if self.owns(caller, v)]
