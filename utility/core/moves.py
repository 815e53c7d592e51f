"""Moving VMs between hosts, as pure data: host health, relocation, evacuation and rebalance.

- `next_health` is the failure detector's state machine: a host that stops answering is
  `suspect`, then `failed` once it has not answered for the grace period; a failed host that
  answers again is `fencing` until its stale domains are destroyed, and only then `up`.
- `relocate` is a VAP state with some VMs on other hosts: same domain names, MACs and
  addresses; each segment's network follows its VMs (one per segment and host, as at start).
- `evacuation` places the VMs of failed hosts on good hosts with the placement policy.
- `rebalance` plans moves that even out memory use across hosts (the `spread` policy's aim).
Nothing here touches a host: `utility.service.moving` applies what these functions decide.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from utility.core.desired_state import Network, VapState
from utility.core.placement import HostRoom, VmDemand, place
from utility.core.sizes import format_size

HEALTH = ("up", "suspect", "failed", "fencing")
"""A host's health: `up` takes VMs; `suspect` and `failed` do not answer (failed: for longer
than the grace period); `fencing`: answers again, stale domains not destroyed yet."""

DEFAULT_GRACE = 30.0
"""Seconds a host may fail to answer before it is `failed` (`cui utility serve --host-grace`)."""


def next_health(previous: str, answers: bool, silent_for: float, grace: float) -> str:
    """The health after one probe.

    Args:
        previous: the health before the probe.
        answers: whether the host's libvirt connection answered.
        silent_for: seconds since the host last answered (0 when it answers now).
        grace: seconds of silence after which a host is failed.
    """
    if answers:
        return "fencing" if previous in ("failed", "fencing") else "up"
    if previous in ("failed", "fencing"):
        return "failed"
    return "failed" if silent_for >= grace else "suspect"


def relocate(
    state: VapState,
    moves: Mapping[str, str],
    underlays: Mapping[str, str | None] | None = None,
) -> VapState:
    """`state` with the VM at each path of `moves` on its new host; networks follow the VMs.

    Everything that names the VM (domain, MACs, addresses, disks) stays: only `host` changes. A
    network made on a host takes that host's underlay address (VXLAN's local end and what its
    peers flood to): from `underlays` (host -> address), else from a network `state` already
    has on that host, else the template's.
    """
    vms = tuple(
        dataclasses.replace(vm, host=moves[vm.path]) if vm.path in moves else vm for vm in state.vms
    )
    templates = {n.name: n for n in state.networks}
    known = {n.host: n.underlay for n in state.networks}
    known.update(underlays or {})
    wanted: dict[tuple[str, str], Network] = {}
    for vm in vms:
        for iface in vm.interfaces:
            template = templates.get(iface.network)
            if template is None:
                continue
            underlay = known.get(vm.host, template.underlay)
            made = dataclasses.replace(template, host=vm.host, underlay=underlay)
            wanted.setdefault((vm.host, template.name), made)
    return dataclasses.replace(
        state, vms=vms, networks=tuple(sorted(wanted.values(), key=lambda n: (n.host, n.name)))
    )


def evacuation(
    demands: Sequence[VmDemand], rooms: Sequence[HostRoom], policy: str
) -> dict[str, str]:
    """Good hosts for the VMs of a failed host: the placement policy over the available hosts.

    Raises:
        PlacementError: some VM fits nowhere (all such VMs named).
    """
    return place(demands, rooms, policy)


CANDIDATES = 8
"""How many of the least loaded hosts a rebalance step considers as targets."""


@dataclass(frozen=True)
class Resident:
    """A VM that runs somewhere: its key (`VAP:path`), host and memory."""

    key: str
    host: str
    memory: int


@dataclass(frozen=True)
class Move:
    """One planned migration."""

    key: str
    source: str
    target: str
    memory: int

    def describe(self) -> str:
        """One line like the update plan's: symbol, subject, where from and to."""
        return f"→ {self.key} {self.source} → {self.target} ({format_size(self.memory)})"


def _load(room: HostRoom) -> float:
    return room.used_memory / room.memory if room.memory > 0 else 1.0


def rebalance(
    residents: Sequence[Resident], rooms: Sequence[HostRoom], policy: str, limit: int = 100
) -> list[Move]:
    """Moves that even out memory use (as a fraction of each host's memory) across hosts.

    Under `spread` each step moves one VM from the most loaded host to one of the `CANDIDATES`
    least loaded available hosts, the VM and target chosen so that the larger of the two loads
    after the move is smallest (ties: VM key, host name); a step is taken only if it lowers
    that larger load, so the plan ends and never moves a VM back; at most `limit` steps. Under
    `pack` the hosts are meant to be uneven: no moves. Unavailable hosts (failed, suspect,
    drained) take nothing; a target needs memory and a VM slot. Each step costs
    O(hosts + VMs on the loaded host).
    """
    if policy != "spread":
        return []
    state = {r.name: r for r in rooms}
    on: dict[str, dict[str, Resident]] = {name: {} for name in state}
    for r in residents:
        if r.host in on:
            on[r.host][r.key] = r
    moves: list[Move] = []
    for _ in range(limit):
        if not state:
            break
        loaded = max(state.values(), key=lambda r: (_load(r), r.name))
        open_hosts = [r for r in state.values() if r.available and r.name != loaded.name]
        targets = heapq.nsmallest(CANDIDATES, open_hosts, key=lambda r: (_load(r), r.name))
        smallest_of_size: dict[int, Resident] = {}
        for vm in on[loaded.name].values():  # VMs of one size are interchangeable here
            kept = smallest_of_size.get(vm.memory)
            if kept is None or vm.key < kept.key:
                smallest_of_size[vm.memory] = vm
        best: tuple[float, str, str] | None = None
        for vm in smallest_of_size.values():
            for target in targets:
                if target.used_vms >= target.max_vms:
                    continue
                if target.used_memory + vm.memory > target.memory:
                    continue
                after = max(
                    (loaded.used_memory - vm.memory) / loaded.memory,
                    (target.used_memory + vm.memory) / target.memory,
                )
                candidate = (after, vm.key, target.name)
                if best is None or candidate < best:
                    best = candidate
        if best is None or best[0] >= _load(loaded) - 1e-9:
            break
        _, key, target_name = best
        vm = on[loaded.name].pop(key)
        target = state[target_name]
        state[loaded.name] = dataclasses.replace(
            loaded, used_memory=loaded.used_memory - vm.memory, used_vms=loaded.used_vms - 1
        )
        state[target_name] = dataclasses.replace(
            target, used_memory=target.used_memory + vm.memory, used_vms=target.used_vms + 1
        )
        on[target_name][key] = dataclasses.replace(vm, host=target_name)
        moves.append(Move(key, loaded.name, target_name, vm.memory))
    return _merged(moves)


def _merged(moves: list[Move]) -> list[Move]:
    """One move per VM (from where it is to where it ends), in the order first planned."""
    first: dict[str, Move] = {}
    last: dict[str, str] = {}
    for move in moves:
        first.setdefault(move.key, move)
        last[move.key] = move.target
    return [
        dataclasses.replace(m, target=last[m.key])
        for m in first.values()
        if m.source != last[m.key]
    ]
