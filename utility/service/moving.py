"""Planned moves: one VM (`cui move`), every VM of a host (`cui host drain`), rebalance.

A move is a live migration (`utility.adapters.migration`) of a running VM to another host,
under the VAP's lock. The segment networks the VM needs are brought up on the target first
(through the one executor, the planner's diff of the networks alone: while the VM moves every
host's VXLAN flood list holds both source and target); the VM migrates keeping its domain name,
MACs and addresses, its disks' top images copied into the target's pool (the chain sent by
content address only where missing); only then is the new host recorded (VM row and VAP state
in one transaction), the source leaves the flood lists, networks no VM uses any more on it are
taken down, and every host of its segments forgets what VXLAN learned about the VM's MACs. A
failed migration changes no record: the VM runs where it was, and the networks are as before.

`drain` closes a host to new placements and moves each VM off it to a host the placement policy
chooses (crashed VMs there are only re-homed: the watchdog boots them on the new host);
`undrain` reopens it. `rebalance` plans with `utility.core.moves.rebalance` and, unless a dry
run, carries the plan out move by move; `rebalance_forever` is its automatic variant.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from utility.adapters.migration import Migrated, Migrator
from utility.adapters.store import ACTIVE, VapRow, short_name
from utility.core import overlay
from utility.core.desired_state import VapState, Vm
from utility.core.moves import Move, Resident, rebalance, relocate
from utility.core.placement import VmDemand, place
from utility.core.planner import Plan, diff
from utility.errors import Conflict, NotFound, UtilityError
from utility.service.lifecycle import Parts
from utility.service.pipeline import FetchReport as Report


class Mover:
    """Moves VMs between hosts (module docstring).

    Args:
        parts: the cluster manager's parts.
        migrator: the live-migration adapter.
        clock: seconds, for the time a move took.
    """

    def __init__(
        self, parts: Parts, migrator: Migrator, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.parts = parts
        self.store = parts.store
        self.migrator = migrator
        self.clock = clock

    # -- one VM ---------------------------------------------------------------------------------

    def move(
        self, name: str, component: str, target: str, who: str, progress: Report | None = None
    ) -> dict[str, Any]:
        """Live-migrate `component` of VAP `name` (`owner/short name`) to host `target`;
        `progress(label, bytes done, bytes in all)` while it copies."""
        with self.parts.locks.for_path(name):
            vap = self._running(name)
            return self._move(vap, component, target, who, progress)

    def _running(self, name: str) -> VapRow:
        vap = self.store.vap_by_name(name)
        if vap is None or vap.status != "running" or vap.state is None:
            raise NotFound(f"{short_name(name)} is not running")
        return vap

    def _check_target(self, vm_memory: int, source: str, target: str) -> None:
        health = self.store.host_health()
        if target not in health:
            raise NotFound(f"no host named {target}")
        if target == source:
            raise Conflict(f"the VM already runs on {target}")
        if health[target].health != "up" or health[target].drained:
            state = "drained" if health[target].drained else health[target].health
            raise Conflict(f"host {target} takes no VMs now ({state})")
        source_health = health[source].health if source in health else "not registered"
        if source_health != "up":
            raise Conflict(f"host {source} is {source_health}: nothing to migrate from")
        with self.parts.allocator.session() as db:
            room = next(r for r in self.parts.allocations.rooms(db) if r.name == target)
        if room.used_vms + 1 > room.max_vms or room.used_memory + vm_memory > room.memory:
            raise Conflict(
                f"host {target} has no room: {room.memory - room.used_memory} bytes free, "
                f"{room.max_vms - room.used_vms} VM slot(s)"
            )

    def _move(
        self,
        vap: VapRow,
        component: str,
        target: str,
        who: str,
        progress: Report | None = None,
    ) -> dict[str, Any]:
        p = self.parts
        state = vap.state
        assert state is not None
        vm = state.vm(component)
        row = next((r for r in self.store.vms(vap.id) if r.path == component), None)
        if vm is None or row is None:
            raise NotFound(f"{vap.name}: no component {component!r}")
        if row.state != "running":
            raise Conflict(f"{component} is {row.state}, not running: only a running VM moves")
        self._check_target(vm.memory, vm.host, target)
        underlays = {h.name: h.underlay for h in self.store.hosts()}
        moved = relocate(state, {component: target}, underlays)
        during = _both(state, moved)  # the segment on source and target while the VM moves
        began = self.clock()
        up = p.applier.run(vap.id, _network_plan(state, during))
        if not up.ok:
            self._networks(vap.id, during, state)
            raise UtilityError(f"move of {component} to {target}: {up.error}; nothing moved")
        source, dest = p.hosts.host(vm.host), p.hosts.host(target)
        try:
            label = f"{vap.name}:{component} {vm.host} → {target}"
            copying = (lambda done, total: progress(label, done, total)) if progress else None
            result = self.migrator.migrate(source, dest, vm.domain, vm, copying)
        except UtilityError as exc:
            self._networks(vap.id, during, state)
            text = f"move of {component} from {vm.host} to {target} failed: {exc}"
            self.store.event(vap.id, "move", text)
            self.store.add_history(vap.name, "move", [], {}, text)
            raise
        self.store.move_vm(vap.id, component, target, moved)
        self._networks(vap.id, during, moved)
        self._forget(moved, vm)
        seconds = self.clock() - began
        text = (
            f"{who} moved {component} from {vm.host} to {target} ({result.mode} live migration, "
            f"{seconds:.1f} s"
            + (f", downtime {result.downtime_ms} ms" if result.downtime_ms is not None else "")
            + _copied(result)
            + ")"
        )
        self.store.event(vap.id, "move", text)
        self.store.add_history(vap.name, "move", [f"→ {component} {vm.host} → {target}"], {}, text)
        return {
            "vap": vap.name,
            "path": component,
            "from": vm.host,
            "to": target,
            "mode": result.mode,
            "seconds": round(seconds, 3),
            "downtime_ms": result.downtime_ms,
            "bytes_copied": result.bytes_copied,
            "memory_bytes": result.memory_bytes,
            "disk_bytes": result.disk_bytes,
            "disks_copied": result.disks,
            "chain_bytes": result.chain_bytes,
            "notes": result.notes,
        }

    def _networks(self, vap_id: int, before: VapState, after: VapState) -> None:
        """Take the VAP's networks from `before` to `after` (flood lists relinked on every
        host, unused networks down), going on past failures."""
        plan = _network_plan(before, after)
        if plan.actions:
            self.parts.applier.run(vap_id, plan, keep_going=True)

    def _forget(self, state: VapState, vm: Vm) -> None:
        """On every host carrying a segment of the moved `vm`, drop what VXLAN learned about
        its MACs: a guest need not announce itself after a migration (Linux sends no
        gratuitous ARP unless `arp_notify` is set, and then qemu sends no RARP either), and
        until it sends, frames to it would go to the host it left. Best effort: they age out
        anyway (300 s)."""
        for net in state.networks:
            macs = [i.mac for i in vm.interfaces if i.network == net.name]
            if not macs or not overlay.stretchable(net):
                continue
            try:
                self.parts.hosts.host(net.host).ports.forget(overlay.port_name(net.bridge), macs)
            except UtilityError as exc:
                self.store.event(None, "move", f"{vm.path}: learned MACs kept on {net.host}: {exc}")

    # -- drain ----------------------------------------------------------------------------------

    def drain(self, host: str, who: str, progress: Report | None = None) -> dict[str, Any]:
        """Close `host` to new VMs and move every VM off it (failures listed, VM left there);
        `progress` as for `move`, per VM."""
        self.store.set_drained(host, True)
        self.store.event(None, "host", f"{who} drained host {host}")
        moved: list[dict[str, Any]] = []
        failed: list[str] = []
        rehomed: list[str] = []
        for vap in self.store.vaps(ACTIVE):
            for row in self.store.vms(vap.id):
                if row.host != host or row.state in ("stopped", "dead"):
                    continue
                key = f"{vap.name}:{row.path}"
                try:
                    with self.parts.locks.for_path(vap.name):
                        current = self._running(vap.name)
                        target = self._destination(row.path, row.memory)
                        if row.state == "crashed":
                            self._rehome(current, row.path, target)
                            rehomed.append(f"{key} → {target}")
                            continue
                        moved.append(self._move(current, row.path, target, who, progress))
                except UtilityError as exc:
                    failed.append(f"{key}: {exc}")
        return {"host": host, "moved": moved, "rehomed": rehomed, "failed": failed}

    def undrain(self, host: str, who: str) -> dict[str, Any]:
        """Reopen a drained host to placements."""
        self.store.set_drained(host, False)
        self.store.event(None, "host", f"{who} undrained host {host}")
        return {"host": host, "drained": False}

    def _destination(self, path: str, memory: int) -> str:
        """The host the placement policy chooses for one VM now (PlacementError if none)."""
        with self.parts.allocator.session() as db:
            rooms = self.parts.allocations.rooms(db)
        return place([VmDemand(path, memory)], rooms, self.parts.settings.placement)[path]

    def _rehome(self, vap: VapRow, path: str, target: str) -> None:
        """Record a crashed VM on another host (no domain to migrate: it boots there)."""
        assert vap.state is not None
        underlays = {h.name: h.underlay for h in self.store.hosts()}
        self.store.move_vm(vap.id, path, target, relocate(vap.state, {path: target}, underlays))
        self.store.event(vap.id, "move", f"crashed {path} re-homed to {target}")

    # -- rebalance ------------------------------------------------------------------------------

    def rebalance(self, who: str, dry_run: bool, progress: Report | None = None) -> dict[str, Any]:
        """Plan moves that even out memory use; carry them out unless `dry_run` (`progress` as
        for `move`)."""
        plan = self.plan()
        result: dict[str, Any] = {
            "lines": [m.describe() for m in plan],
            "moves": [m.__dict__ for m in plan],
            "applied": not dry_run,
            "moved": [],
            "failed": [],
        }
        if dry_run or not plan:
            return result
        for move in plan:
            cvl, _, path = move.key.rpartition(":")
            try:
                result["moved"].append(self.move(cvl, path, move.target, who, progress))
            except UtilityError as exc:
                result["failed"].append(f"{move.key}: {exc}")
        return result

    def rebalance_forever(self, interval: float, stopping: threading.Event) -> None:
        """The automatic variant (`cui utility serve --rebalance-interval`, off by default):
        plan and carry out a rebalance every `interval` seconds until `stopping`."""
        while not stopping.wait(interval):
            try:
                result = self.rebalance("auto-rebalance", dry_run=False)
            except Exception as exc:  # noqa: BLE001 - a failed round must not end the loop
                self.store.event(None, "rebalance", f"failed: {type(exc).__name__}: {exc}")
                continue
            if result["lines"]:
                moved, failed = len(result["moved"]), len(result["failed"])
                self.store.event(None, "rebalance", f"{moved} VM(s) moved, {failed} not")

    def plan(self) -> list[Move]:
        """The rebalance plan over the running VMs of up hosts (pure: `core.moves.rebalance`)."""
        health = self.store.host_health()
        up = {n for n, h in health.items() if h.health == "up"}
        residents = [
            Resident(f"{vap.name}:{row.path}", row.host, row.memory)
            for vap in self.store.vaps(("running",))
            for row in self.store.vms(vap.id)
            if row.state == "running" and row.host in up
        ]
        with self.parts.allocator.session() as db:
            rooms = [r for r in self.parts.allocations.rooms(db) if r.name in up]
        return rebalance(residents, rooms, self.parts.settings.placement)


def _copied(result: Migrated) -> str:
    """The bytes a migration moved, for the history line (libvirt's job statistics)."""
    if result.bytes_copied is None:
        return ""
    parts = [f"memory {result.memory_bytes}"] if result.memory_bytes is not None else []
    if result.disks:
        disks = "+".join(result.disks)
        parts.append(f"disks {disks} {result.disk_bytes if result.disk_bytes is not None else '?'}")
    if result.chain_bytes:
        parts.append(f"chain objects uploaded first {result.chain_bytes}")
    detail = f": {', '.join(parts)}" if parts else ""
    return f", {result.bytes_copied} bytes copied{detail}"


def _both(before: VapState, after: VapState) -> VapState:
    """`after` with the networks of both states: while a VM migrates, its segments are on the
    source and the target, and every other host floods to both."""
    nets = {(n.host, n.name): n for n in (*before.networks, *after.networks)}
    return dataclasses.replace(after, networks=tuple(nets[k] for k in sorted(nets)))


def _network_plan(before: VapState, after: VapState) -> Plan:
    """The network actions from `before` to `after` and nothing else: new networks up with
    their VXLAN flood lists, the flood lists of kept ones relinked (`NETWORK_LINK`), networks
    no VM uses down; the planner's own diff over the two states without their VMs."""
    return diff(dataclasses.replace(before, vms=()), dataclasses.replace(after, vms=()))
