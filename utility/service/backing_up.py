"""Backups of every running VM's data disks: after every applied update and every
`--backup-interval` seconds (`cui utility serve`, default 10 minutes, 0: off).

Each backup is taken through the VM's host's libvirt (`utility.adapters.backups.take`), checked,
kept in `keep` generations, and recorded in the VAP's events (a failed one also in its history,
the place users look when something went wrong). A host that is not `up`, a VM that is not
running, and hosts of libvirt's test driver (no backup job there) are skipped. What a host
failure loses is what was written since the last backup (`utility.adapters.restore`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from utility.adapters import backups
from utility.core.backups import DEFAULT_KEEP
from utility.errors import UtilityError
from utility.service.lifecycle import Parts


class Backups:
    """Takes and reports the data-disk backups (module docstring).

    Args:
        parts: the cluster manager's parts.
        keep: generations kept per data disk.
        wall: wall-clock seconds (the backup's time and name).
    """

    def __init__(
        self, parts: Parts, keep: int = DEFAULT_KEEP, wall: Callable[[], float] = time.time
    ) -> None:
        if keep < 1:
            raise ValueError(f"backup generations to keep must be at least 1, not {keep}")
        self.parts = parts
        self.store = parts.store
        self.keep = keep
        self.wall = wall

    def back_up(self, vap_id: int, trigger: str) -> list[str]:
        """Back up every data disk of VAP `vap_id`'s running VMs (the caller holds the VAP's
        lock or accepts a race with a stop: then that disk's backup fails and says so); one
        line per disk, each also recorded as an event."""
        vap = next((v for v in self.store.vaps() if v.id == vap_id), None)
        if vap is None or vap.state is None:
            return []
        health = self.store.host_health()
        rows = {row.path: row for row in self.store.vms(vap_id)}
        lines: list[str] = []
        for vm in vap.state.vms:
            row = rows.get(vm.path)
            data = [d for d in vm.disks if d.role == "data"]
            host_health = health.get(vm.host)
            if not data or row is None or row.state != "running":
                continue
            if host_health is not None and host_health.health != "up":
                continue
            host = self.parts.hosts.host(vm.host)
            if host.is_test:
                continue
            for disk in data:
                lines.append(self._one(vap, vm, disk, host, trigger))
        return lines

    def _one(self, vap: Any, vm: Any, disk: Any, host: Any, trigger: str) -> str:
        where = f"{vm.path} {disk.target}"
        try:
            taken = backups.take(host.storage, vm, disk, self.keep, self.wall())
        except (UtilityError, OSError, TimeoutError) as exc:
            text = f"{where}: backup ({trigger}) failed: {exc}"
            self.store.event(vap.id, "backup", text)
            self.store.add_history(vap.name, "backup", [], {}, text)
            return text
        text = (
            f"{where}: backup {taken.path.name} ({trigger}, "
            f"{'incremental' if taken.incremental else 'full'}): {taken.wire_bytes} bytes "
            f"from the host in {taken.seconds:.1f} s"
        )
        self.store.event(vap.id, "backup", text)
        return text

    def back_up_all(self, trigger: str = "interval") -> list[str]:
        """One round over every running VAP, each under its lock (a VAP busy with an update or
        a stop is skipped this round: an update takes its own backup when it is applied)."""
        lines: list[str] = []
        for vap in self.store.vaps(("running",)):
            lock = self.parts.locks.for_path(vap.name)
            if not lock.acquire(blocking=False):
                continue
            try:
                lines += self.back_up(vap.id, trigger)
            finally:
                lock.release()
        return lines

    def run_forever(self, interval: float, stopping: threading.Event) -> None:
        """`back_up_all` every `interval` seconds until `stopping`."""
        while not stopping.wait(interval):
            try:
                self.back_up_all()
            except Exception as exc:  # noqa: BLE001 - a failed round must not end the loop
                self.store.event(None, "backup", f"round failed: {type(exc).__name__}: {exc}")

    @staticmethod
    def latest(vm: Any) -> dict[str, float]:
        """Data disk target -> time of its latest valid backup (status)."""
        out: dict[str, float] = {}
        for disk in vm.disks:
            if disk.role == "data":
                found = backups.latest(disk)
                if found is not None:
                    out[disk.target] = found[0].taken
        return out
