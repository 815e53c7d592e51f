"""Failure detection, routing around a failed host, and fencing of a host that comes back.

`HostMonitor.check` runs at the start of every watchdog round. It probes each host's libvirt
connection (remote connections also carry libvirt keepalive, which closes a connection to a
silent host) and steps its health with `utility.core.moves.next_health`:

- a host that does not answer is `suspect`; once it has not answered for the grace period it
  is `failed`: the VMs recorded on it become `lost` (they may still run behind a partition,
  so they keep their addresses and are never shown as running); recorded in events and in each
  VAP's history. No new VM is placed on a host that is not `up` (`Allocations.rooms`).
- the lost VMs of a running VAP (restart policy `always`; sensitive parameters, if any, still
  held in the daemon's memory: `HeldSecrets.unmask`) are restarted on good hosts: placement
  picks the hosts, `relocate` moves them in the VAP's state (same domain names, MACs,
  addresses; networks follow), and the one executor boots
  them in dependency order with their data disks from `restore.restore_data_disks` (status says
  from what). If no host has room they stay lost and each round tries again.
- a failed host that answers again is `fencing`: every domain on it that the records place
  elsewhere, or that is lost, is destroyed (and stale networks of the utility removed) before
  it is `up` and takes VMs again, so a VM never runs twice. Lost VMs that were not restarted
  elsewhere become `crashed` there, and the watchdog restarts them under their policy.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from utility.adapters.host_storage import overlay_name
from utility.adapters.libvirt_host import LibvirtHost
from utility.adapters.restore import restore_data_disks
from utility.adapters.store import ACTIVE, VapRow
from utility.core import overlay
from utility.core.desired_state import VapState
from utility.core.moves import DEFAULT_GRACE, evacuation, next_health, relocate
from utility.core.placement import VmDemand
from utility.errors import PlacementError, UtilityError
from utility.service.lifecycle import Parts

LOST = "lost"


class HostMonitor:
    """The failure detector and what follows from it (module docstring).

    Args:
        parts: the cluster manager's parts.
        grace: seconds a host may stay silent before it is failed.
        clock: monotonic seconds (tests pass their own).
        wall: wall-clock seconds for the restore's age (tests pass their own).
    """

    def __init__(
        self,
        parts: Parts,
        grace: float = DEFAULT_GRACE,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.parts = parts
        self.store = parts.store
        self.grace = grace
        self.clock = clock
        self.wall = wall
        self.last_ok: dict[str, float] = {}
        self.said: set[tuple[int, str, str]] = set()
        self._hung: dict[str, threading.Thread] = {}

    # -- one round ------------------------------------------------------------------------------

    def check(self) -> dict[str, list[str]]:
        """Probe every host, step its health, act on changes, restart lost VMs elsewhere."""
        report: dict[str, list[str]] = {"suspect": [], "failed": [], "fenced": [], "moved": []}
        health = self.store.host_health()
        answers = self._probe_all()
        now = self.clock()
        for name, was in health.items():
            ok = answers.get(name, False)
            if ok:
                self.last_ok[name] = now
            silent = now - self.last_ok.setdefault(name, now)
            new = next_health(was.health, ok, silent, self.grace)
            if new == was.health:
                continue
            self.store.set_host_health(name, new, None if ok else f"silent for {silent:.0f} s")
            self.store.event(None, "host", f"host {name}: {was.health} -> {new}")
            if new == "suspect":
                report["suspect"].append(name)
            elif new == "failed":
                report["failed"].append(name)  # its VMs are marked lost just below
            elif new == "fencing" and self.fence(name):
                report["fenced"].append(name)
        for name, h in self.store.host_health().items():
            if h.health == "failed":
                self._lose(name)  # VAPs that were busy when the host failed, now
            elif h.health == "fencing" and name not in report["fenced"] and self.fence(name):
                report["fenced"].append(name)  # a fence that failed last round, again
        report["moved"] = self.route_around()
        return report

    def _probe_all(self) -> dict[str, bool]:
        """Host name -> answered, probing in parallel (daemon threads: a hung probe never holds
        up the daemon's exit); a probe slower than half the grace period counts as silence, and
        a host whose last probe still hangs is not probed again until it returns."""
        answers: dict[str, bool] = {}
        started: dict[str, threading.Thread] = {}
        for row in self.store.hosts():
            if row.name in self._hung and self._hung[row.name].is_alive():
                answers[row.name] = False
                continue
            host = self.parts.hosts.pool.get(row.name, row.uri)

            def probe(name: str = row.name, host: LibvirtHost = host) -> None:
                answers[name] = host.probe()

            thread = threading.Thread(target=probe, daemon=True, name=f"probe-{row.name}")
            thread.start()
            started[row.name] = thread
        deadline = time.monotonic() + max(1.0, self.grace / 2)
        for name, thread in started.items():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._hung[name] = thread
        return {name: answers.get(name) is True for name in set(started) | set(answers)}

    # -- failed ---------------------------------------------------------------------------------

    def _lose(self, host: str) -> None:
        """Mark every VM that may run on failed `host` lost; record it per VAP. A VAP whose
        lock is held (an operation under way) is done in a later round (idempotent)."""
        for vap in self.store.vaps(ACTIVE):
            rows = [r for r in self.store.vms(vap.id) if r.host == host]
            if not any(r.state not in ("stopped", "dead", LOST) for r in rows):
                continue
            lock = self.parts.locks.for_path(vap.name)
            if not lock.acquire(blocking=False):
                continue
            try:
                rows = [r for r in self.store.vms(vap.id) if r.host == host]
                lost = [r.path for r in rows if r.state not in ("stopped", "dead", LOST)]
                for path in lost:
                    self.store.set_vm(vap.id, path, LOST)
            finally:
                lock.release()
            if not lost:
                continue
            text = (
                f"host {host} failed (silent for {self.grace:.0f} s): "
                f"{', '.join(p or '(root)' for p in lost)} lost"
            )
            self.store.event(vap.id, "host-failed", text)
            self.store.add_history(vap.name, "host-failed", [f"✗ {p}" for p in lost], {}, text)

    def route_around(self) -> list[str]:
        """Restart the lost VMs of failed hosts on good hosts; the `VAP:path`s restarted."""
        failed = {n for n, h in self.store.host_health().items() if h.health == "failed"}
        moved: list[str] = []
        if not failed:
            return moved
        for vap in self.store.vaps(("running",)):
            lost = [r for r in self.store.vms(vap.id) if r.state == LOST and r.host in failed]
            if not lost or vap.state is None:
                continue
            lock = self.parts.locks.for_path(vap.name)
            if not lock.acquire(blocking=False):
                continue  # an operation is under way; next round
            try:
                moved += self._restart_elsewhere(self.store.vap(vap.id), [r.path for r in lost])
            finally:
                lock.release()
        return moved

    def _refuse(self, vap: VapRow, why: str, paths: list[str]) -> list[str]:
        """Say once per VAP and reason why its lost VMs stay lost."""
        key = (vap.id, ",".join(paths), why)
        if key not in self.said:
            self.said.add(key)
            text = f"{', '.join(paths)} stay lost: {why}"
            self.store.event(vap.id, "host-failed", text)
            self.store.add_history(vap.name, "host-failed", [], {}, text)
        return []

    def _restart_elsewhere(self, vap: VapRow, paths: list[str]) -> list[str]:
        p = self.parts
        state = vap.state
        assert state is not None
        if self.store.restart_policy(vap.id) != "always":
            return self._refuse(vap, "the VAP's restart policy is never", paths)
        if self.store.secret_keys(vap.id):
            full = p.secrets.unmask_state(vap.id, state, set(paths))
            if full is None:
                return self._refuse(
                    vap,
                    "its sensitive values were held only in memory (the daemon restarted since)",
                    paths,
                )
            state = full
        vms = [vm for vm in state.vms if vm.path in paths]
        underlays = {h.name: h.underlay for h in self.store.hosts()}
        try:
            with p.allocator.session() as db:
                rooms = p.allocations.rooms(db)
                placement = evacuation(
                    [VmDemand(vm.path, vm.memory) for vm in vms], rooms, p.settings.placement
                )
                target = relocate(state, placement, underlays)
                for path, host in placement.items():
                    db.execute(
                        "UPDATE vms SET host=?, state='pending' WHERE vap_id=? AND path=?",
                        (host, vap.id, path),
                    )
                self.store.set_vap(vap.id, state=target, db=db)
        except PlacementError as exc:
            return self._refuse(vap, str(exc), paths)
        sources = {vm.path: restore_data_disks(vm, self.wall()) for vm in vms}
        current = _as_left(state, set(paths), placement)
        outcome = p.applier.apply(vap.id, current, target, keep_going=True).outcome
        done = {k.removeprefix("vm:") for k in outcome.done}
        restarted = []
        for vm in vms:
            if vm.path in done:
                self.store.record_restore(vap.id, vm.path, sources[vm.path])
                restarted.append(vm.path)
            else:
                self.store.set_vm(vap.id, vm.path, "crashed")  # the watchdog retries in place
        problems = ([outcome.error] if outcome.error else []) + outcome.notes
        lines = [f"+ {path} on {placement[path]}" for path in restarted]
        text = (
            f"restarted {', '.join(restarted) or 'nothing'} on good hosts "
            f"(data: {'; '.join(f'{k}: {v}' for k, v in sources.items())})"
            + (f"; problems: {'; '.join(problems)}" if problems else "")
        )
        self.store.event(vap.id, "evacuate", text)
        self.store.add_history(vap.name, "host-failed", lines, {}, text)
        return [f"{vap.name}:{p}" for p in restarted]

    # -- fencing --------------------------------------------------------------------------------

    def fence(self, host: str) -> bool:
        """Destroy the stale domains on `host` (it answers again after it failed); True once it
        is clean and `up` again."""
        wrapper = self.parts.hosts.host(host)
        vaps = {vap.id: vap for vap in self.store.vaps(ACTIVE)}
        rows = {row.domain: row for vap_id in vaps for row in self.store.vms(vap_id)}
        destroyed: list[str] = []
        try:
            for info in wrapper.domains():
                row = rows.get(info.name)
                if row is None:
                    continue  # not the utility's: reported as unowned, never killed
                if row.host == host and row.state != LOST:
                    continue  # placed here after the host came back
                wrapper.destroy_domain(info.name)
                destroyed.append(info.name)
            for row in rows.values():
                if row.host == host and row.state == LOST:
                    self.store.set_vm(row.vap_id, row.path, "crashed")
            self._drop_stale_volumes(host, vaps, rows)
            self._drop_stale_networks(host)
        except UtilityError as exc:
            self.store.event(None, "host", f"host {host}: fencing failed, tried again: {exc}")
            return False
        self.store.set_host_health(host, "up", f"fenced: {len(destroyed)} stale domain(s)")
        text = f"host {host} fenced: destroyed {', '.join(destroyed) or 'no stale domain'}"
        self.store.event(None, "host", text)
        touched = {row.vap_id for row in rows.values() if row.host == host}
        touched |= {row.vap_id for row in rows.values() if row.domain in destroyed}
        for vap in (vaps[i] for i in sorted(touched)):
            self.store.add_history(vap.name, "fenced", [f"✗ {d}" for d in destroyed], {}, text)
        return True

    def _drop_stale_volumes(self, host: str, vaps: dict[int, VapRow], rows: dict[str, Any]) -> None:
        """Delete the pool volumes on `host` of VMs that now run elsewhere (their overlays and
        data disks as the host had them when it failed: what was written there since the last
        backup is given up, README "What is lost"). VMs still placed on `host` keep theirs."""
        wrapper = self.parts.hosts.host(host)
        if wrapper.is_test:
            return
        present = set(wrapper.storage.volumes())
        for row in rows.values():
            state = vaps[row.vap_id].state
            vm = state.vm(row.path) if state is not None else None
            if row.host == host or vm is None:
                continue
            if any(overlay_name(vm, disk) in present for disk in vm.disks):
                wrapper.storage.release(vm, keep_data=False)

    def _drop_stale_networks(self, host: str) -> None:
        """Remove the utility's networks on `host` that no active VAP's state places there, each
        with its VXLAN port (the port would flood to hosts that no longer expect it)."""
        prefix = self.parts.settings.prefix + "-"
        wanted = {
            n.name
            for vap in self.store.vaps(ACTIVE)
            if vap.state is not None
            for n in vap.state.networks
            if n.host == host
        }
        wrapper = self.parts.hosts.host(host)
        underlay = next((h.underlay for h in self.store.hosts() if h.name == host), None)
        for name in wrapper.networks():
            if name.startswith(prefix) and name not in wanted:
                if underlay is not None and overlay.is_segment_bridge(name):
                    wrapper.ports.remove(overlay.port_name(name))  # and its flood entries
                wrapper.remove_network(name)

    def describe(self) -> list[dict[str, Any]]:
        """Each host's health for status and the pages."""
        return [dataclasses.asdict(h) for h in self.store.host_health().values()]


def _as_left(state: VapState, paths: set[str], placement: dict[str, str]) -> VapState:
    """What runs of `state` once its VMs at `paths` are lost: the other VMs, where they are,
    and every network of `state` still standing, also those on the failed hosts. The VXLAN
    ports of the good hosts still flood to the failed ones: the plan from here to the relocated
    state sets their flood lists (`~net`) without the failed hosts, and tries to take the
    failed hosts' networks down (`-net`, last; it fails while such a host does not answer, and
    fencing removes them when it does)."""
    kept = dataclasses.replace(state, vms=tuple(vm for vm in state.vms if vm.path not in paths))
    standing = {(n.host, n.name) for n in relocate(kept, {}).networks}
    failed = {vm.host for vm in state.vms if vm.path in paths and vm.host != placement[vm.path]}
    networks = tuple(n for n in state.networks if (n.host, n.name) in standing or n.host in failed)
    return dataclasses.replace(kept, networks=networks)
