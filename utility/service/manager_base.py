"""What every part of the cluster manager shares: its state, hosts, locks and access checks.

`ClusterManager` (utility.service.manager) is assembled from this base and three parts,
each a module: `administration` (hosts, pools, blacklist, trust, subscriptions),
`lifecycle` (start, stop and the allocation they share with updates)
and `updating` (update, history).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utility.adapters.executor import Timeouts
from utility.adapters.libvirt_host import HostPool, LibvirtHost, probe_default_uri
from utility.adapters.store import ACTIVE, HostRow, Store, VapRow
from utility.adapters.subscriptions import Subscriptions
from utility.adapters.trust_policy import TrustPolicy
from utility.errors import (
    Forbidden,
    NotFound,
    UtilityError,
)
from utility.service.allocation import Settings
from utility.service.callers import Caller, require_owner

FetchReport = Callable[[str, int, int], None]
"""`report(label, bytes done, bytes total)` while a disk's objects download."""

EMBEDDED_HOST = "local"
EMBEDDED_MAX_VMS = 16


# Search permission for others, no listing: qemu (user libvirt-qemu) must open the backing files
# in `cache/`; everything else in the directory (database, run/, secrets) is 0600/0700.
STATE_DIR_MODE = 0o711


class ManagerBase:
    """One cluster manager over a state directory.

    Args:
        state_dir: holds the SQLite database, the object cache and guest sockets.
        settings: naming, addressing base and placement policy.
        timeouts: readiness and clean-shutdown timeouts.
        default_uri: the embedded default host's URI; probed (`qemu:///system` or
            `test:///default`) when None.
        user_root: when set, users (not administrators) may only start CVL files under it; the
            daemon reads their CVL and writes disks next to it with its own privileges.
    """

    def __init__(
        self,
        state_dir: Path,
        settings: Settings | None = None,
        timeouts: Timeouts | None = None,
        default_uri: str | None = None,
        user_root: Path | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.user_root = user_root.resolve() if user_root else None
        state_dir.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
        self.store = Store(state_dir)
        self.settings = settings or Settings()
        self.timeouts = timeouts or Timeouts()
        self.default_uri = default_uri
        self.pool = HostPool()
        self.cache_dir = state_dir / "cache"
        self.cache_dir.mkdir(exist_ok=True, mode=0o755)  # published objects only, no secrets
        self.run_dir = state_dir / "run"
        self.run_dir.mkdir(exist_ok=True, mode=0o700)
        self._alloc_lock = threading.Lock()
        self._vap_locks: dict[str, threading.Lock] = {}
        self.unowned: list[dict[str, str]] = []
        self._secrets: dict[str, dict[str, str]] = {}  # in memory only, for automatic updates
        self.trust = TrustPolicy(state_dir)
        self.subscriptions = Subscriptions(state_dir)

    def close(self) -> None:
        """Close every host connection."""
        self.pool.close()

    def host(self, name: str) -> LibvirtHost:
        """The libvirt wrapper of registered host `name`."""
        for row in self.store.hosts():
            if row.name == name:
                return self.pool.get(row.name, row.uri)
        raise NotFound(f"no host named {name}")

    def _ensure_default_host(self) -> list[str]:
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
        try:
            self.store.add_host(HostRow(EMBEDDED_HOST, uri, memory, EMBEDDED_MAX_VMS, True))
        except UtilityError:
            return []
        return [f"no host registered: using {reason}"]

    # -- helpers --------------------------------------------------------------------------------

    def _may_use(self, caller: Caller, path: Path) -> None:
        """Users may only run CVL files under the configured user root (if any)."""
        if caller.admin or self.user_root is None or path.is_relative_to(self.user_root):
            return
        raise Forbidden(f"{caller.name} may only start CVL files under {self.user_root}")

    def _lock_for(self, path: str) -> threading.Lock:
        with self._alloc_lock:
            return self._vap_locks.setdefault(path, threading.Lock())

    def _active(self, caller: Caller, path: str) -> VapRow:
        vap = self.store.vap_by_path(path)
        if vap is None or vap.status not in ACTIVE:
            raise NotFound(f"{path} is not running")
        require_owner(caller, vap, "control")
        return vap

    # -- status ---------------------------------------------------------------------------------

    def status(self, caller: Caller, cvl_path: str | None = None) -> list[dict[str, Any]]:
        """Status of the caller's VAPs (all of them for administrators), or of one CVL file."""
        if cvl_path is not None:
            path = str(Path(cvl_path).resolve())
            vap = self.store.vap_by_path(path)
            if vap is None:
                raise NotFound(f"{path} was never started")
            require_owner(caller, vap, "see")
            return [self.vap_status(vap.id)]
        return [
            self.vap_status(v.id)
            for v in self.store.vaps()
            if caller.admin or v.owner == caller.name
        ]

    def vap_status(self, vap_id: int) -> dict[str, Any]:
        """One VAP's status: per component path, type, version, host, interfaces, state, uptime."""
        vap = self.store.vap(vap_id)
        rows = {r.path: r for r in self.store.vms(vap_id)}
        now = time.time()
        components = []
        state = vap.state
        for vm in state.vms if state else ():
            row = rows.get(vm.path)
            running = row is not None and row.state == "running"
            components.append(
                {
                    "path": vm.path,
                    "type": vm.type,
                    "version": (vm.origin or {}).get("version"),
                    "repository": (vm.origin or {}).get("url"),
                    "host": vm.host,
                    "domain": vm.domain,
                    "memory": vm.memory,
                    "interfaces": [
                        {
                            "name": i.name,
                            "ip": i.ip,
                            "mac": i.mac,
                            "network": i.network,
                            "netmask": i.netmask,
                        }
                        for i in vm.interfaces
                    ],
                    "state": row.state if row else "stopped",
                    "boot_seq": row.boot_seq if row else None,
                    "uptime": round(now - row.started, 3)
                    if running and row and row.started
                    else None,
                    "started": row.started if running and row else None,
                    "params": {k: list(v) for k, v in vm.masked().params},
                }
            )
        for path, row in rows.items():
            if state is None or state.vm(path) is None:
                components.append(
                    {
                        "path": path,
                        "host": row.host,
                        "domain": row.domain,
                        "state": row.state,
                        "boot_seq": row.boot_seq,
                        "interfaces": [],
                        "uptime": None,
                    }
                )
        boot_order = [
            r.path
            for r in sorted(rows.values(), key=lambda r: r.boot_seq or 0)
            if r.boot_seq is not None
        ]
        return {
            "id": vap.id,
            "cvl": vap.cvl_path,
            "owner": vap.owner,
            "status": vap.status,
            "error": vap.error,
            "appliance": state.appliance if state else None,
            "vlans": dict(state.vlans) if state and vap.status in ACTIVE else {},
            "networks": [dataclasses.asdict(n) for n in state.networks] if state else [],
            "boot_order": boot_order,
            "components": components,
        }
