"""Administration: hosts, the VLAN and public-IP pools, the blacklist, trust, subscriptions, tokens.

The facade (`utility.service.manager`) lets only administrators call these (`Policy`).
"""

from __future__ import annotations

import secrets as token_source
from pathlib import Path
from typing import Any

from utility.adapters.store import ACTIVE, Store
from utility.adapters.subscriptions import Subscriptions
from utility.adapters.trust_policy import TrustPolicy
from utility.core import addresses
from utility.errors import UtilityError
from utility.service.hosts import Hosts
from utility.service.policy import check_token_name

ROLES = ("admin", "user")


class Administration:
    """The administrators' operations.

    Args:
        store: the state database (pools, blacklist, tokens).
        hosts: the registered hosts.
        trust: the trust policy.
        subscriptions: the repositories this utility gets publish events from.
    """

    def __init__(
        self, store: Store, hosts: Hosts, trust: TrustPolicy, subscriptions: Subscriptions
    ) -> None:
        self.store = store
        self.hosts = hosts
        self.trust = trust
        self.subscriptions = subscriptions

    def add_vlans(self, spec: str) -> int:
        """Add a VLAN range such as "100-163"."""
        return self.store.add_vlans([int(v) for v in addresses.parse_range(spec)])

    def add_public_ips(self, spec: str) -> int:
        """Add a public IP range such as "192.0.2.10-192.0.2.20"."""
        items = addresses.parse_range(spec)
        if any("." not in i for i in items):
            raise UtilityError(f"{spec!r} is not an IP address range")
        return self.store.add_public_ips(items)

    def blacklist_add(self, url: str, version: str) -> None:
        """Blacklist a repository version or "all"."""
        if version != "all" and not version.isdigit():
            raise UtilityError(f"blacklist version {version!r}: a version number or 'all'")
        self.store.blacklist_add(url, version)

    def blacklist(self) -> list[dict[str, str]]:
        """The blacklist."""
        return [{"url": u, "version": v} for u, v in self.store.blacklist()]

    def violations(self) -> list[dict[str, Any]]:
        """Active VAPs that run a blacklisted version (they are not stopped)."""
        banned = set(self.store.blacklist())
        found = []
        for vap in self.store.vaps(ACTIVE):
            for vm in vap.state.vms if vap.state else ():
                origin = vm.origin or {}
                url, version = origin.get("url", "").rstrip("/"), origin.get("version", "")
                if (url, version) in banned or (url, "all") in banned:
                    found.append(
                        {
                            "vap": vap.name,
                            "owner": vap.owner,
                            "component": vm.path,
                            "url": url,
                            "version": version,
                        }
                    )
        return found

    def add_token(self, name: str, role: str) -> str:
        """A new bearer token for `name` with `role` (stored only as its hash)."""
        return add_token(self.store, name, role)


def add_token(store: Store, name: str, role: str) -> str:
    """A new bearer token for `name` with `role`, recorded in `store`; the token itself."""
    if role not in ROLES:
        raise UtilityError("role must be 'admin' or 'user'")
    check_token_name(name)
    token = token_source.token_urlsafe(32)
    store.add_token(name, role, token)
    return token


def bootstrap_token(state_dir: Path, name: str, role: str) -> str:
    """A token written straight into a state directory (a TCP-only daemon's first
    administrator, `cui utility token add --state DIR`)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return add_token(Store(state_dir), name, role)
