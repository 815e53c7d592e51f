"""Administration: hosts, the VLAN and public-IP pools, the blacklist, trust, subscriptions."""

from __future__ import annotations

from typing import Any

from utility.adapters.store import ACTIVE, HostRow
from utility.core import addresses
from utility.core.sizes import format_size
from utility.errors import (
    UtilityError,
)
from utility.service.callers import Caller, require_admin
from utility.service.manager_base import ManagerBase


class Administration(ManagerBase):
    """The administrators' operations (each refuses users with `Forbidden`)."""

    def add_host(self, caller: Caller, name: str, uri: str, memory: int, max_vms: int) -> HostRow:
        """Register a host (administrators only); its libvirt connection is checked first."""
        require_admin(caller, "add hosts")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise UtilityError(f"host name {name!r}: use letters, digits, '-' and '_'")
        if memory <= 0 or max_vms <= 0:
            raise UtilityError("host memory and max VMs must be positive")
        self.pool.get(name, uri).connection()
        row = HostRow(name, uri, memory, max_vms)
        self.store.add_host(row)
        return row

    def remove_host(self, caller: Caller, name: str) -> None:
        """Forget a host (administrators only); refused while it runs VMs."""
        require_admin(caller, "remove hosts")
        self.store.remove_host(name)
        self.pool.drop(name)

    def hosts(self, caller: Caller) -> list[dict[str, Any]]:
        """Every host with its capacity and use."""
        usage = self.store.usage()
        return [
            {
                "name": h.name,
                "uri": h.uri,
                "memory": h.memory,
                "max_vms": h.max_vms,
                "used_memory": usage.get(h.name, (0, 0))[0],
                "vms": usage.get(h.name, (0, 0))[1],
                "embedded": h.embedded,
            }
            for h in self.store.hosts()
        ]

    # -- pools, blacklist, trust and subscriptions ----------------------------------------------

    def add_vlans(self, caller: Caller, spec: str) -> int:
        """Add a VLAN range such as "100-163" (administrators only)."""
        require_admin(caller, "change the VLAN pool")
        return self.store.add_vlans([int(v) for v in addresses.parse_range(spec)])

    def add_public_ips(self, caller: Caller, spec: str) -> int:
        """Add a public IP range such as "192.0.2.10-192.0.2.20" (administrators only)."""
        require_admin(caller, "change the public IP pool")
        items = addresses.parse_range(spec)
        if any("." not in i for i in items):
            raise UtilityError(f"{spec!r} is not an IP address range")
        return self.store.add_public_ips(items)

    def pools(self, caller: Caller) -> dict[str, Any]:
        """Both pools (administrators only)."""
        require_admin(caller, "see the pools")
        return self.store.pools()

    def blacklist_add(self, caller: Caller, url: str, version: str) -> None:
        """Blacklist a repository version or "all" (administrators only)."""
        require_admin(caller, "change the blacklist")
        if version != "all" and not version.isdigit():
            raise UtilityError(f"blacklist version {version!r}: a version number or 'all'")
        self.store.blacklist_add(url, version)

    def blacklist_remove(self, caller: Caller, url: str, version: str) -> None:
        """Remove a blacklist entry (administrators only)."""
        require_admin(caller, "change the blacklist")
        self.store.blacklist_remove(url, version)

    def set_trust(self, caller: Caller, url: str | None, require_signed: bool) -> None:
        """Set `require-signed` globally or for one repository URL (administrators only)."""
        require_admin(caller, "change the trust policy")
        self.trust.set_require_signed(url, require_signed)

    def trust_key(self, caller: Caller, url: str | None, key: str) -> str:
        """Trust a signing key globally or for one URL (administrators only)."""
        require_admin(caller, "change the trust policy")
        return self.trust.add_key(url, key)

    def subscribe(
        self, caller: Caller, repository: str, events_url: str, auth: tuple[str, str] | None
    ) -> dict[str, Any]:
        """Register for publish events of `repository` (administrators only)."""
        require_admin(caller, "subscribe to repositories")
        return self.subscriptions.subscribe(repository, events_url, auth)

    def unsubscribe(
        self, caller: Caller, repository: str, auth: tuple[str, str] | None
    ) -> dict[str, Any]:
        """Stop publish events of `repository` (administrators only)."""
        require_admin(caller, "unsubscribe from repositories")
        return self.subscriptions.unsubscribe(repository, auth)

    def blacklist(self, caller: Caller) -> list[dict[str, str]]:
        """The blacklist."""
        return [{"url": u, "version": v} for u, v in self.store.blacklist()]

    def violations(self, caller: Caller) -> list[dict[str, Any]]:
        """Active VAPs that run a blacklisted version (they are not stopped)."""
        require_admin(caller, "list blacklist violations")
        banned = set(self.store.blacklist())
        found = []
        for vap in self.store.vaps(ACTIVE):
            for vm in vap.state.vms if vap.state else ():
                origin = vm.origin or {}
                url, version = origin.get("url", "").rstrip("/"), origin.get("version", "")
                if (url, version) in banned or (url, "all") in banned:
                    found.append(
                        {
                            "cvl": vap.cvl_path,
                            "owner": vap.owner,
                            "component": vm.path,
                            "url": url,
                            "version": version,
                        }
                    )
        return found


def describe_host(row: HostRow) -> str:
    """One line about a host for people."""
    return f"{row.name} {row.uri} {format_size(row.memory)} max {row.max_vms} VMs"
