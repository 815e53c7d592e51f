"""The registered hosts and their libvirt connections (one `HostPool` per cluster manager)."""

from __future__ import annotations

from typing import Any

from utility.adapters.libvirt_host import HostPool, LibvirtHost, probe_default_uri
from utility.adapters.store import HostRow, Store
from utility.core import overlay
from utility.errors import NotFound, UtilityError

EMBEDDED_HOST = "local"
EMBEDDED_MAX_VMS = 16


class Hosts:
    """Hosts by name, and the embedded default host registered when there is none.

    Args:
        store: the state database (the `hosts` table).
        pool: the open libvirt connections.
        default_uri: the embedded host's URI; probed (`qemu:///system` or `test:///default`)
            when None.
    """

    def __init__(self, store: Store, pool: HostPool, default_uri: str | None = None) -> None:
        self.store = store
        self.pool = pool
        self.default_uri = default_uri

    def host(self, name: str) -> LibvirtHost:
        """The libvirt wrapper of registered host `name`."""
        for row in self.store.hosts():
            if row.name == name:
                return self.pool.get(row.name, row.uri)
        raise NotFound(f"no host named {name}")

    def ensure_default(self) -> list[str]:
        """With no host registered, register the embedded local host; say which in one line."""
        if self.store.hosts():
            return []
        uri, reason = (
            (self.default_uri, f"embedded default host {self.default_uri}")
            if self.default_uri
            else probe_default_uri()
        )
        host = self.pool.get(EMBEDDED_HOST, uri)
        memory = host.memory()
        if not host.is_test:
            host.storage.ensure_pool()  # the disks of its VMs are volumes there
        try:
            self.store.add_host(HostRow(EMBEDDED_HOST, uri, memory, EMBEDDED_MAX_VMS, True))
        except UtilityError:
            return []
        return [f"no host registered: using {reason}"]

    def add(
        self,
        name: str,
        uri: str,
        memory: int,
        max_vms: int,
        underlay: overlay.Underlay | None = None,
    ) -> HostRow:
        """Register a host; its libvirt connection is checked first, and with an underlay
        address, that the host holds it and can make VXLAN ports from it (over the same
        credentials: `utility.adapters.vxlan_ports`); the utility's storage pool is made there
        (idempotent: an existing one is kept). Nothing is stored when a check fails."""
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise UtilityError(f"host name {name!r}: use letters, digits, '-' and '_'")
        if memory <= 0 or max_vms <= 0:
            raise UtilityError("host memory and max VMs must be positive")
        host = self.pool.get(name, uri)
        host.connection()
        if underlay is not None:
            host.ports.probe(underlay.address)
        if not host.is_test:
            host.storage.ensure_pool()
        row = HostRow(name, uri, memory, max_vms, underlay=underlay.address if underlay else None)
        self.store.add_host(row)
        return row

    def underlays(self) -> dict[str, str | None]:
        """host name -> its underlay address (None: the host carries no VXLAN ports)."""
        return {h.name: h.underlay for h in self.store.hosts()}

    def remove(self, name: str) -> None:
        """Forget a host; refused while it runs VMs."""
        self.store.remove_host(name)
        self.pool.drop(name)

    def listing(self) -> list[dict[str, Any]]:
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
                "underlay": h.underlay,
            }
            for h in self.store.hosts()
        ]

    def remove_network_everywhere(self, name: str) -> list[str]:
        """Remove libvirt network `name` from every host, with its VXLAN port on hosts that
        have an underlay; the problems, as notes."""
        notes = []
        for row in self.store.hosts():
            host = self.pool.get(row.name, row.uri)
            try:
                if row.underlay is not None and overlay.is_segment_bridge(name):
                    host.ports.remove(overlay.port_name(name))
                host.remove_network(name)
            except UtilityError as exc:
                notes.append(str(exc))
        return notes

    def close(self) -> None:
        """Close every host connection."""
        self.pool.close()
