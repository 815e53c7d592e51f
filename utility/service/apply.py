"""The one operation that changes what runs: `apply(current, desired)`.

Start is `apply(None, desired)`, stop `apply(current, None)` (or `current` without a component),
update `apply(current, desired)` with vanished components removed, rollback
`apply(current, None)` forced and continuing past failures. The planner (`utility.core.planner`)
computes the actions; the one executor (`utility.adapters.executor`) carries them out; this
object records each VM's state (booting, running with its boot sequence, stopped) as they go.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from utility.adapters.executor import Executor, Outcome, Timeouts
from utility.adapters.libvirt_host import LibvirtHost
from utility.adapters.store import Store
from utility.core.desired_state import VapState, Vm
from utility.core.planner import Action, Op, Plan, diff


@dataclass(frozen=True)
class Applied:
    """A plan and how far it got."""

    plan: Plan
    outcome: Outcome


class Applier:
    """Applies state changes of VAPs to the hosts.

    Args:
        store: where VM states are recorded.
        hosts: host name -> its libvirt wrapper.
        timeouts: readiness and clean-shutdown timeouts (each call may pass its own).
        attic: where removed components' directories go unless a call names another.
        clock: the time recorded as a VM's start (tests pass their own).
        boot_order: "overlapped" (boots overlap, configuration waits for requirements) or
            "strict" (a VM boots only after its requirements are READY); see the executor.
    """

    def __init__(
        self,
        store: Store,
        hosts: Callable[[str], LibvirtHost],
        timeouts: Timeouts,
        attic: Path,
        clock: Callable[[], float] = time.time,
        boot_order: str = "overlapped",
    ) -> None:
        self.store = store
        self.hosts = hosts
        self.timeouts = timeouts
        self.attic = attic
        self.clock = clock
        self.boot_order = boot_order

    @staticmethod
    def plan(current: VapState | None, desired: VapState | None, *, vanished: Op = Op.STOP) -> Plan:
        """What `apply` would do (shown by dry runs and recorded in history)."""
        return diff(current, desired, vanished=vanished)

    def apply(
        self,
        vap_id: int,
        current: VapState | None,
        desired: VapState | None,
        *,
        vanished: Op = Op.STOP,
        keep_going: bool = False,
        timeouts: Timeouts | None = None,
        attic: Path | None = None,
    ) -> Applied:
        """Take VAP `vap_id` from `current` to `desired`; with `keep_going` (rollback, stop)
        failures are noted and the remaining actions still run."""
        plan = self.plan(current, desired, vanished=vanished)
        executor = Executor(
            self.hosts,
            vap_id,
            timeouts or self.timeouts,
            attic or self.attic,
            report=lambda action, phase: self._record(vap_id, action, phase),
            boot_order=self.boot_order,
        )
        return Applied(plan, executor.run(plan, keep_going=keep_going))

    def run(self, vap_id: int, plan: Plan, *, keep_going: bool = False) -> Outcome:
        """Carry out a plan made elsewhere (a move's network steps) with the one executor."""
        executor = Executor(
            self.hosts,
            vap_id,
            self.timeouts,
            self.attic,
            report=_ignore,
            boot_order=self.boot_order,
        )
        return executor.run(plan, keep_going=keep_going)

    def restart(self, vap_id: int, vm: Vm) -> None:
        """Boot a crashed VM again where it was (fresh program overlays, its data disks)."""
        executor = Executor(self.hosts, vap_id, self.timeouts, self.attic, report=_ignore)
        self.hosts(vm.host).destroy_domain(vm.domain)
        self.store.set_vm(vap_id, vm.path, "booting")
        try:
            executor.boot(vm)
        except BaseException:
            self.store.set_vm(vap_id, vm.path, "crashed")
            raise
        self.store.set_vm(vap_id, vm.path, "running", started=self.clock(), boot=True)

    def _record(self, vap_id: int, action: Action, phase: str) -> None:
        if action.vm is None:
            return
        path = action.vm.path
        if action.op in (Op.START, Op.UPDATE):
            # The boot events carry the host's clock: the order in which VMs were let go and
            # became READY, comparable across VMs (guest clocks are not).
            if phase == "begin":
                self.store.set_vm(vap_id, path, "booting")
                self.store.event(vap_id, "boot", f"{path}: booting")
            elif phase == "configure":
                self.store.event(vap_id, "boot", f"{path}: parameters sent")
            else:
                self.store.set_vm(vap_id, path, "running", started=self.clock(), boot=True)
                self.store.event(vap_id, "boot", f"{path}: ready")
        elif action.op in (Op.STOP, Op.REMOVE) and phase == "done":
            self.store.set_vm(vap_id, path, "stopped")


def _ignore(_action: Action, _phase: str) -> None:
    """A report nobody reads (a restart records its own states)."""
