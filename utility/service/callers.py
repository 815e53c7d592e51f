"""Who asks the cluster manager, and the two authorisation rules every part of it applies.

Administrators manage hosts, pools, the blacklist, trust and subscriptions and see every VAP; a
user sees and controls only their own VAPs. Refusals are `Forbidden`, turned into HTTP 403 only in
`utility.web.api`.
"""

from __future__ import annotations

from dataclasses import dataclass

from utility.adapters.store import VapRow
from utility.errors import Forbidden


@dataclass(frozen=True)
class Caller:
    """Who asks: a token's name and role ("admin" or "user")."""

    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def require_admin(caller: Caller, what: str) -> None:
    """Refuse unless `caller` is an administrator; `what` completes "only administrators may"."""
    if not caller.admin:
        raise Forbidden(f"only administrators may {what} ({caller.name} is a user)")


def require_owner(caller: Caller, vap: VapRow, what: str) -> None:
    """Refuse unless `caller` owns `vap` (or administers)."""
    if not caller.admin and vap.owner != caller.name:
        raise Forbidden(f"{caller.name} may not {what} {vap.cvl_path}: it belongs to another user")
