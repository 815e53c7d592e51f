"""The cluster manager: its parts assembled, and reconciliation with the hosts at start-up.

It ties the pure parts (checks, placement, addressing, planner) to the edges (SQLite store,
libvirt hosts, qemu-img, guest channel). The parts, one module each: `manager_base` (state,
hosts, locks, status), `administration` (hosts, pools, blacklist, trust, subscriptions),
`lifecycle` (start, stop, and the allocation and rollback they share with updates) and
`updating` (update, history). Callers are identified by a `Caller` (`callers`); authorisation
is decided in these modules and turned into HTTP statuses only in `api`.
"""

from __future__ import annotations

from typing import Any

from utility.core.desired_state import VapState
from utility.errors import UtilityError
from utility.service.administration import Administration
from utility.service.callers import Caller
from utility.service.manager_base import EMBEDDED_HOST, FetchReport
from utility.service.updating import Updating


class ClusterManager(Administration, Updating):
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

    # -- reconciliation -------------------------------------------------------------------------

    def reconcile(self) -> dict[str, Any]:
        """Bring the recorded state in line with what the hosts report (run at daemon start).

        - a VAP caught mid-start/stop/update is rolled back to stopped, allocations released;
        - a running VAP's VM whose domain is gone or not running is marked `dead`;
        - a domain on a host that no active VAP owns is reported, never killed.
        """
        report: dict[str, Any] = {"rolled_back": [], "dead": [], "unowned": [], "unreachable": []}
        for vap in self.store.vaps(("starting", "stopping", "updating")):
            self._roll_back(
                vap.id, f"interrupted: the cluster manager stopped during {vap.status}; rolled back"
            )
            report["rolled_back"].append(vap.cvl_path)
        owned: set[tuple[str, str]] = set()
        for vap in self.store.vaps(("running",)):
            for row in self.store.vms(vap.id):
                owned.add((row.host, row.domain))
                if row.state != "running":
                    continue
                try:
                    info = self.host(row.host).domain(row.domain)
                except UtilityError:
                    continue
                if info is None or not info.running:
                    self.store.set_vm(vap.id, row.path, "dead")
                    self.store.event(
                        vap.id, "dead", f"{row.path}: domain {row.domain} on {row.host} is gone"
                    )
                    report["dead"].append(f"{vap.cvl_path}:{row.path}")
        for host in self.store.hosts():
            try:
                domains = self.pool.get(host.name, host.uri).domains()
            except UtilityError as exc:
                report["unreachable"].append(str(exc))
                continue
            for info in domains:
                if (host.name, info.name) not in owned:
                    report["unowned"].append({"host": host.name, "domain": info.name})
        self.unowned = report["unowned"]
        return report


__all__ = ["EMBEDDED_HOST", "Caller", "ClusterManager", "FetchReport", "VapState"]
