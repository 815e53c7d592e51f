"""The one executor: applies any `Plan` to hosts, disks and guests.

Actions run as soon as the actions they need have finished, several at once (independent VMs
boot in parallel). A VM counts as started when its guest said READY over the channel; on `test:`
hosts there is no guest, so readiness is immediate (documented contract for simulated hosts).
The first failure stops new actions from starting; running ones finish; the outcome names the
failed action, its host and the error, and lists what completed so the caller can roll back.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from utility.adapters import disks, guest_channel
from utility.adapters.libvirt_host import LibvirtHost
from utility.core import domain_xml
from utility.core.desired_state import Vm
from utility.core.network_xml import NetworkXml
from utility.core.planner import Action, Op, Plan
from utility.errors import UtilityError


@dataclass(frozen=True)
class Timeouts:
    """How long to wait for a guest to be ready, and for a clean shutdown before forcing it."""

    ready: float = 300.0
    stop: float = 180.0


@dataclass
class Outcome:
    """What happened when a plan ran."""

    done: list[str] = field(default_factory=list)
    failed: str | None = None
    error: str | None = None
    exception: BaseException | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed is None


Reporter = Callable[[Action, str], None]
"""Called with (action, "begin" | "done") from worker threads."""


class RolledBack(UtilityError):
    """An updated VM never became ready; the previous version runs again, data restored."""


class Executor:
    """Applies plans for one VAP.

    Args:
        hosts: host name -> its libvirt wrapper.
        vap_id: recorded in each domain's metadata.
        timeouts: readiness and shutdown timeouts.
        attic: where REMOVE moves a component's directory.
        report: progress callback (the service records boot order and states through it).
        workers: most actions in flight at once.
    """

    def __init__(
        self,
        hosts: Callable[[str], LibvirtHost],
        vap_id: int,
        timeouts: Timeouts,
        attic: Path,
        report: Reporter | None = None,
        workers: int = 8,
    ) -> None:
        self.hosts = hosts
        self.vap_id = vap_id
        self.timeouts = timeouts
        self.attic = attic
        self.report = report or (lambda _a, _s: None)
        self.workers = workers

    def run(self, plan: Plan, *, keep_going: bool = False) -> Outcome:
        """Apply `plan`. With `keep_going` (rollback), failures are noted and the rest still run."""
        outcome = Outcome()
        pending = {a.key: a for a in plan.actions}
        keys = set(pending)
        finished: set[str] = set()
        running: dict[Future[None], Action] = {}
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            while pending or running:
                if outcome.ok or keep_going:
                    for key in [
                        k
                        for k, a in pending.items()
                        if all(n in finished or n not in keys for n in a.needs)
                    ]:
                        action = pending.pop(key)
                        running[pool.submit(self._apply, action)] = action
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    action = running.pop(future)
                    finished.add(action.key)
                    exc = future.exception()
                    if exc is None:
                        outcome.done.append(action.key)
                        continue
                    message = f"{action.describe()}: {exc}"
                    if outcome.ok:
                        outcome.failed, outcome.error = action.key, message
                        outcome.exception = exc
                    else:
                        outcome.notes.append(message)
        return outcome

    # -- one action ---------------------------------------------------------------------------

    def _apply(self, action: Action) -> None:
        self.report(action, "begin")
        handler = {
            Op.NETWORK_UP: self._network_up,
            Op.START: self._start,
            Op.UPDATE: self._update,
            Op.RESEND: self._resend,
            Op.STOP: self._stop,
            Op.REMOVE: self._remove,
            Op.NETWORK_DOWN: self._network_down,
        }[action.op]
        handler(action)
        self.report(action, "done")

    def _network_up(self, action: Action) -> None:
        net = action.network
        assert net is not None
        host = self.hosts(net.host)
        vlan = net.vlan if host.supports_vlan() else None
        host.ensure_network(net.name, NetworkXml(net.name, net.bridge, vlan).to_xml())

    def _network_down(self, action: Action) -> None:
        net = action.network
        assert net is not None
        self.hosts(net.host).remove_network(net.name)

    def boot(self, vm: Vm) -> None:
        """Fresh disks, create the domain, deliver parameters, wait until ready."""
        host = self.hosts(vm.host)
        disks.prepare(vm)
        Path(vm.guest_socket).unlink(missing_ok=True)
        xml = domain_xml.from_vm(vm, self.vap_id, host.domain_type()).to_xml()
        host.create_domain(xml)
        if host.is_test:
            return  # simulated host: no guest, ready at once
        try:
            guest_channel.deliver(vm.guest_socket, vm.param_map(), self.timeouts.ready)
        except UtilityError as exc:
            raise UtilityError(f"{vm.path} on host {vm.host} did not become ready: {exc}") from None

    def _start(self, action: Action) -> None:
        assert action.vm is not None
        self.boot(action.vm)

    def halt(self, vm: Vm) -> str:
        """Clean shutdown, forced after the stop timeout; test hosts are simply destroyed."""
        host = self.hosts(vm.host)
        if host.is_test:
            return "forced" if host.destroy_domain(vm.domain) else "absent"
        return host.shutdown_domain(vm.domain, self.timeouts.stop)

    def _stop(self, action: Action) -> None:
        assert action.vm is not None
        self.halt(action.vm)
        Path(action.vm.guest_socket).unlink(missing_ok=True)

    def _remove(self, action: Action) -> None:
        assert action.vm is not None
        self.halt(action.vm)
        disks.move_to_attic(action.vm, self.attic)

    def _update(self, action: Action) -> None:
        """Stop, snapshot data disks, boot the new version; if it never becomes ready, roll back:
        the old version's program overlays, the data disks as they were, and the old VM again."""
        assert action.vm is not None and action.old is not None
        self.halt(action.old)
        snapshots = disks.snapshot_data(action.old)
        try:
            self.boot(action.vm)
        except UtilityError as exc:
            self.halt(action.vm)
            disks.restore_data(snapshots)
            self.boot(action.old)
            self.report(Action(op=Op.START, key=action.key, vm=action.old), "done")
            old = (action.old.origin or {}).get("version")
            raise RolledBack(
                f"{exc}; rolled back to {'v' + old if old else 'the previous image'}"
                f" with its data disks as before the update"
            ) from None
        disks.drop_snapshots(snapshots)

    def _resend(self, action: Action) -> None:
        vm = action.vm
        assert vm is not None
        if self.hosts(vm.host).is_test:
            return
        guest_channel.resend(vm.guest_socket, vm.param_map(), self.timeouts.ready)
