"""A start or update the cluster manager died in, reconciled per component (at start-up).

A component is *untouched* when its VM record says `running`, its domain runs and, for an update,
it was booted before the update began (its `started` is not after the VAP's `updated` time, which
the update set): it keeps running with its addresses. Every other component of the state
of record is *interrupted*: its domain is destroyed and it is booted again from that state —
for a start the start is completed, for an update the step is undone (the recorded state is the
one before the update; data disks the update had copied before booting the new version are put
back from that copy). VMs the update was adding are destroyed and their addresses released.
When that cannot be done safely (a host does not answer, or the VAP's sensitive values were only
in memory), the caller falls back to the whole-VAP rollback.
"""

from __future__ import annotations

from utility.adapters import disks
from utility.adapters.allocations import HeldRows
from utility.adapters.store import VapRow
from utility.core.desired_state import VapState
from utility.core.model_view import join_path
from utility.errors import UtilityError
from utility.service.lifecycle import Lifecycle, Parts


class Recovery:
    """Per-component reconciliation of interrupted starts and updates."""

    def __init__(self, parts: Parts, lifecycle: Lifecycle) -> None:
        self.parts = parts
        self.store = parts.store
        self.lifecycle = lifecycle

    def recover(self, vap: VapRow) -> bool:
        """Reconcile VAP `vap` (status `starting` or `updating`) per component; False when the
        caller should roll the whole VAP back instead."""
        state = vap.state
        if state is None or self.store.secret_keys(vap.id) or self.lifecycle.unreachable(vap.id):
            return False
        try:
            untouched = self._untouched(vap, state)
        except UtilityError:
            return False
        for row in self.store.vms(vap.id):
            if row.path not in untouched:
                self.parts.hosts.host(row.host).destroy_domain(row.domain)
        restored: list[str] = []
        for vm in state.vms:
            if vm.path not in untouched:
                restored += disks.restore_interrupted(vm)
        self._settle(vap.id, state)
        kept = state
        for vm in state.vms:
            if vm.path not in untouched:
                kept = kept.without(vm.path)
        outcome = self.parts.applier.apply(vap.id, kept, state).outcome
        if not outcome.ok:
            return False
        redone = sorted({vm.path for vm in state.vms} - untouched)
        what = "start completed" if vap.status == "starting" else "update undone"
        text = (
            f"interrupted {what} per component: "
            f"{', '.join(redone) or 'nothing'} booted again from the recorded state; "
            f"{', '.join(sorted(untouched)) or 'nothing'} kept running"
        )
        self.store.set_vap(vap.id, status="running", state=state, error=None)
        if restored:
            text += f"; data disks as before the update: {', '.join(restored)}"
        self.store.event(vap.id, "reconcile", text)
        self.store.add_history(vap.name, "reconcile", [f"↻ {p}" for p in redone], {}, text)
        return True

    def _untouched(self, vap: VapRow, state: VapState) -> set[str]:
        """The components the interrupted operation did not touch (see the module docstring)."""
        out = set()
        for row in self.store.vms(vap.id):
            vm = state.vm(row.path)
            if vm is None or row.state != "running":
                continue
            if vap.status == "updating" and (row.started or 0) > vap.updated:
                continue  # booted by the interrupted update: its version is not the recorded one
            info = self.parts.hosts.host(row.host).domain(row.domain)
            if info is not None and info.running:
                out.add(row.path)
        return out

    def _settle(self, vap_id: int, state: VapState) -> None:
        """Release what the recorded state does not use (VMs an update was adding)."""
        in_use = {
            join_path(vm.path, i.name): {i.mac, i.ip} for vm in state.vms for i in vm.interfaces
        }
        running = {vm.path for vm in state.vms}
        stopped_on_request = {
            r.path for r in self.store.vms(vap_id) if r.state == "stopped" and r.path not in running
        }
        self.parts.allocations.settle(
            vap_id, HeldRows(in_use, running, stopped_on_request, set(state.vlans.values()))
        )
