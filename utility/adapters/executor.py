"""The one executor: applies any `Plan` to hosts, disks and guests.

Actions run as soon as the actions they need have finished, several at once (independent VMs
boot in parallel). A VM counts as started when its guest said READY over the channel; on `test:`
hosts there is no guest, so readiness is immediate (documented contract for simulated hosts).
The first failure stops new actions from starting; running ones finish; the outcome names the
failed action, its host and the error, and lists what completed so the caller can roll back.

Boot order. `strict`: a VM's domain is created only after every VM it requires is READY, so
boots run one after another along the dependency chain. `overlapped` (the default): a VM's
domain is created as soon as its networks are up, and its configuration (the PARAMS line, and so
its services) is held after HELLO until the VMs it requires are READY. Services start in the same
order; only the boots overlap. If a required VM fails, a held VM is destroyed unconfigured (an
updated one goes back to its previous version) and the outcome is the strict order's.

Disks. On a real host the disks are volumes of the utility's libvirt storage pool there
(`host_storage`): program-disk chain objects uploaded when the host lacks them, fresh overlays
made by the host's libvirtd at every boot, data disks brought from the VM's directory at boot
and taken back there when the VM stops (STOP, REMOVE, before an update's snapshot), so the
pre-update copy and the attic work on the same local files as before and a stopped VM leaves no
volume behind. Simulated `test:` hosts keep the local files of `disks` (nothing boots there).
The guest channel is the Unix socket on a local host, a libvirt stream on a remote one.

Deadlock freedom with a bounded pool: a held action is submitted only after the actions it waits
for, and the pool runs submissions first in, first out, so the oldest unfinished action always
holds a slot and waits for nothing unfinished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from utility.adapters import disks, guest_channel, killpoint
from utility.adapters.libvirt_host import LibvirtHost
from utility.adapters.vxlan_ports import PortSpec
from utility.core import domain_xml, overlay
from utility.core.desired_state import Network, Vm
from utility.core.network_xml import NetworkXml
from utility.core.planner import Action, Op, Plan
from utility.errors import UtilityError

BOOT_ORDERS = ("overlapped", "strict")
"""Ways to boot the VMs of a start or update (see the module docstring)."""


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
"""Called with (action, "begin" | "configure" | "done") from worker threads."""

CPU_WEIGHT_DEFAULT = 1024
"""libvirt's (cgroup v1 `cpu.shares`) default weight of a domain."""
CPU_WEIGHT_HELD = 64
"""The weight of a VM booting two or more steps down the chain ahead of its requirements
(overlapped order; one step down it boots at CPU_WEIGHT_LEAF) until every VM it waits for has
been let go (given its parameters): 1/16 of a normal VM's, so its early boot uses CPU the VMs
further up the chain leave idle. Once they configure, it gets the default weight and
finishes booting while they do, so it is up when they are READY (just in time: a VM two steps
down the chain does not take CPU from the first step's boots)."""
CPU_WEIGHT_LEAF = 256
"""The weight, until it is READY, of a VM of an overlapped start that waits for nothing and that
nothing in the start waits for (the Groupware's Firewall), when other VMs of the start do wait:
off the critical path, so the VMs the chain starts with boot with more of the CPU."""


def _boot_weights(plan: Plan, held: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """VM path -> the CPU weight it boots at in an overlapped run (absent: the default): held
    one step down the chain, or waiting for nothing while nothing waits for it when others do
    wait, CPU_WEIGHT_LEAF; held two or more steps down, CPU_WEIGHT_HELD."""
    waited = {n for needs in held.values() for n in needs}
    weights = {}
    for a in plan.actions:
        if a.vm is None or a.key not in held:
            continue
        needs = held[a.key]
        if any(held.get(n) for n in needs):
            weights[a.vm.path] = CPU_WEIGHT_HELD
        elif needs or (waited and a.key not in waited):
            weights[a.vm.path] = CPU_WEIGHT_LEAF
    return weights


class RolledBack(UtilityError):
    """An updated VM never became ready; the previous version runs again, data restored."""


class Cancelled(UtilityError):
    """A booted VM was never configured: a VM it requires failed, or the run stopped."""


class _Gates:
    """Which actions of one run finished and how; held VMs wait here for their requirements."""

    def __init__(self, keep_going: bool) -> None:
        self._cond = threading.Condition()
        self._finished: dict[str, bool] = {}
        self._let_go: set[str] = set()
        self._aborted = False
        self._keep_going = keep_going

    def finish(self, key: str, ok: bool) -> None:
        """Record that `key` finished; a failure stops every held VM unless keep_going."""
        with self._cond:
            self._finished[key] = ok
            self._aborted = self._aborted or (not ok and not self._keep_going)
            self._cond.notify_all()

    def let_go(self, key: str) -> None:
        """Record that `key` was given its parameters (it configures now)."""
        with self._cond:
            self._let_go.add(key)
            self._cond.notify_all()

    def wait_let_go(self, keys: tuple[str, ...]) -> bool:
        """Wait until every one of `keys` was let go or finished; False if the run stopped."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._aborted or all(k in self._let_go or k in self._finished for k in keys)
            )
            return not self._aborted

    def settled(self, keys: tuple[str, ...]) -> bool:
        """Whether all `keys` finished (well or not) or the run stopped: nothing to wait for."""
        with self._cond:
            return self._aborted or all(k in self._finished for k in keys)

    def wait(self, keys: tuple[str, ...], path: str) -> None:
        """Return once all `keys` finished well (or at all, with keep_going); else Cancelled."""
        with self._cond:
            self._cond.wait_for(lambda: self._aborted or all(k in self._finished for k in keys))
            failed = [k for k in keys if self._finished.get(k) is False]
            complete = all(k in self._finished for k in keys)
            if complete and (self._keep_going or not failed):
                return
        reason = f"{', '.join(failed)} failed" if failed else "the run stopped"
        raise Cancelled(f"{path} was not configured: {reason}")


class Executor:
    """Applies plans for one VAP.

    Args:
        hosts: host name -> its libvirt wrapper.
        vap_id: recorded in each domain's metadata.
        timeouts: readiness and shutdown timeouts.
        attic: where REMOVE moves a component's directory.
        report: progress callback (the service records boot order and states through it).
        workers: most actions in flight at once.
        boot_order: "overlapped" or "strict" (module docstring).
    """

    def __init__(
        self,
        hosts: Callable[[str], LibvirtHost],
        vap_id: int,
        timeouts: Timeouts,
        attic: Path,
        report: Reporter | None = None,
        workers: int = 8,
        boot_order: str = "overlapped",
    ) -> None:
        if boot_order not in BOOT_ORDERS:
            raise UtilityError(f"boot order {boot_order!r} is not one of {', '.join(BOOT_ORDERS)}")
        self.hosts = hosts
        self.vap_id = vap_id
        self.timeouts = timeouts
        self.attic = attic
        self.report = report or (lambda _a, _s: None)
        self.workers = workers
        self.boot_order = boot_order
        self._gates = _Gates(False)
        self._holds: dict[str, tuple[str, ...]] = {}
        self._keys: dict[str, str] = {}
        self._weights: dict[str, int] = {}

    def _held_needs(self, plan: Plan) -> dict[str, tuple[str, ...]]:
        """Per START/UPDATE key, the VM actions whose READY its configuration waits for
        (overlapped order); empty in strict order, where they are ordinary needs."""
        if self.boot_order == "strict":
            return {}
        booting = {a.key for a in plan.actions if a.op in (Op.START, Op.UPDATE)}
        return {
            a.key: tuple(n for n in a.needs if n in booting)
            for a in plan.actions
            if a.key in booting
        }

    def run(self, plan: Plan, *, keep_going: bool = False) -> Outcome:
        """Apply `plan`. With `keep_going` (rollback), failures are noted and the rest still run."""
        outcome = Outcome()
        pending = {a.key: a for a in plan.actions}
        keys = set(pending)
        held = self._held_needs(plan)
        self._gates = _Gates(keep_going)
        self._holds = {a.vm.path: held[a.key] for a in plan.actions if a.vm and held.get(a.key)}
        self._keys = {a.vm.path: a.key for a in plan.actions if a.vm}
        self._weights = _boot_weights(plan, held)
        finished: set[str] = set()
        submitted: set[str] = set()
        running: dict[Future[None], Action] = {}

        def ready(a: Action) -> bool:
            waits_later = held.get(a.key, ())
            return all(
                n in finished or n not in keys or (n in waits_later and n in submitted)
                for n in a.needs
            )

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            while pending or running:
                if outcome.ok or keep_going:
                    progress = True
                    while progress:  # a held action right after what it waits for, in order
                        progress = False
                        for key in [k for k, a in pending.items() if ready(a)]:
                            action = pending.pop(key)
                            submitted.add(key)
                            running[pool.submit(self._apply, action)] = action
                            progress = True
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    action = running.pop(future)
                    self._finished(outcome, action, future.exception())
                    finished.add(action.key)
        return outcome

    def _finished(self, outcome: Outcome, action: Action, exc: BaseException | None) -> None:
        """Record one finished action in the outcome and release what waits for it."""
        if exc is None:
            outcome.done.append(action.key)
        elif isinstance(exc, Cancelled) and not outcome.ok:
            pass  # never configured because of the failure already reported: as in strict order
        elif outcome.ok:
            outcome.failed, outcome.error = action.key, f"{action.describe()}: {exc}"
            outcome.exception = exc
        else:
            outcome.notes.append(f"{action.describe()}: {exc}")
        self._gates.finish(action.key, exc is None)

    # -- one action ---------------------------------------------------------------------------

    def _apply(self, action: Action) -> None:
        killpoint.step(f"{action.key} begin")
        self.report(action, "begin")
        handler = {
            Op.NETWORK_UP: self._network_up,
            Op.NETWORK_LINK: self._network_link,
            Op.START: self._start,
            Op.UPDATE: self._update,
            Op.RESEND: self._resend,
            Op.STOP: self._stop,
            Op.REMOVE: self._remove,
            Op.NETWORK_DOWN: self._network_down,
        }[action.op]
        handler(action)
        self.report(action, "done")
        killpoint.step(f"{action.key} done")

    def _network_up(self, action: Action) -> None:
        """The segment's bridge; on a host with an underlay, its VXLAN port and flood list."""
        net = action.network
        assert net is not None
        host = self.hosts(net.host)
        vlan = net.vlan if host.supports_vlan() else None
        mtu = overlay.segment_mtu(net.underlay) if overlay.stretchable(net) else None
        host.ensure_network(net.name, NetworkXml(net.name, net.bridge, vlan, mtu).to_xml())
        if overlay.stretchable(net):
            self._link(net, action.peers)

    def _network_link(self, action: Action) -> None:
        """A VM of the segment came to or left another host: the flood list follows."""
        assert action.network is not None
        self._link(action.network, action.peers)

    def _link(self, net: Network, peers: tuple[str, ...]) -> None:
        assert net.vlan is not None and net.underlay is not None
        spec = PortSpec(
            port=overlay.port_name(net.bridge),
            bridge=net.bridge,
            vni=net.vlan,
            local=net.underlay,
            mtu=overlay.SEGMENT_MTU,
            peers=peers,
        )
        flood = self.hosts(net.host).ports.ensure(spec)
        if set(flood) != set(peers):
            raise UtilityError(
                f"host {net.host}: VXLAN port {spec.port} floods to {', '.join(flood) or 'none'}"
                f" instead of {', '.join(peers) or 'none'}"
            )

    def _network_down(self, action: Action) -> None:
        """The VXLAN port (with its flood entries) and the bridge."""
        net = action.network
        assert net is not None
        host = self.hosts(net.host)
        if overlay.stretchable(net):
            host.ports.remove(overlay.port_name(net.bridge))
        host.remove_network(net.name)

    def boot(self, vm: Vm, configured: Callable[[], None] | None = None) -> None:
        """Fresh disks, create the domain, deliver parameters, wait until ready.

        In overlapped order the parameters wait (after HELLO) until the VMs this one requires
        are READY; if one of them fails the domain is destroyed unconfigured (Cancelled).
        `configured` runs just before the parameters are sent (the host-clock record of when
        this VM was let go).
        """
        host = self.hosts(vm.host)
        if host.is_test:
            disks.prepare(vm)
            placement = domain_xml.Placement()
        else:
            placement = domain_xml.Placement(
                host.storage.prepare(vm),
                remote=not host.is_local,
                pty_channel=host.channel_over_stream,
            )
        Path(vm.guest_socket).unlink(missing_ok=True)
        xml = domain_xml.from_vm(vm, self.vap_id, host.domain_type(), placement).to_xml()
        waits_for = self._holds.pop(vm.path, ())  # once: a rollback boot of the old VM never waits
        key = self._keys.get(vm.path, vm.path)
        gates = self._gates
        # CPU weights only where measured and tested: the local host (a lab run of the
        # Groupware on remote hosts failed with them, cause not yet found).
        weight = self._weights.pop(vm.path, None) if host.is_local and not host.is_test else None
        weigh = bool(waits_for) and weight is not None
        leaf = not waits_for and weight is not None

        def hold() -> None:
            gates.wait(waits_for, vm.path)
            if weigh:
                host.set_cpu_weight(vm.domain, CPU_WEIGHT_DEFAULT)  # on the critical path now
            if configured is not None:
                configured()
            gates.let_go(key)

        def promote() -> None:
            """The default weight once everything this VM waits for configures (above)."""
            if gates.wait_let_go(waits_for):
                host.set_cpu_weight(vm.domain, CPU_WEIGHT_DEFAULT)

        host.create_domain(xml)
        killpoint.step(f"{vm.path or 'root'} domain-created")
        if weight is not None:
            # Off the critical path for now: its boot takes what CPU the VMs the chain waits
            # for leave, so overlapped boots do not slow them.
            host.set_cpu_weight(vm.domain, weight)
        if weigh:
            threading.Thread(target=promote, name=f"promote {vm.path}", daemon=True).start()
        try:
            if host.is_test:
                hold()  # simulated host: no guest, ready once its requirements are
                return
            transport = host.open_serial(vm.domain, "serial1") if host.channel_over_stream else None
            guest_channel.deliver(
                vm.guest_socket,
                vm.param_map(),
                self.timeouts.ready,
                hold,
                transport,
                pending=(lambda: not gates.settled(waits_for)) if waits_for else None,
            )
            if leaf:
                host.set_cpu_weight(vm.domain, CPU_WEIGHT_DEFAULT)
        except Cancelled:
            host.destroy_domain(vm.domain)
            Path(vm.guest_socket).unlink(missing_ok=True)
            raise
        except UtilityError as exc:
            raise UtilityError(f"{vm.path} on host {vm.host} did not become ready: {exc}") from None

    def _start(self, action: Action) -> None:
        assert action.vm is not None
        self.boot(action.vm, lambda: self.report(action, "configure"))

    def halt(self, vm: Vm) -> str:
        """Clean shutdown, forced after the stop timeout; test hosts are simply destroyed."""
        host = self.hosts(vm.host)
        if host.is_test:
            return "forced" if host.destroy_domain(vm.domain) else "absent"
        return host.shutdown_domain(vm.domain, self.timeouts.stop)

    def release(self, vm: Vm, keep_data: bool = True, collect: bool = False) -> None:
        """After a halt: the VM's data disks back into its directory (unless not `keep_data`)
        and its volumes deleted from the host's pool (nothing to do on a test host); with
        `collect` (a stop or removal), the host's chain objects nothing needs any more go too
        (`HostStorage.collect_garbage`: after its grace period)."""
        host = self.hosts(vm.host)
        if not host.is_test:
            host.storage.release(vm, keep_data)
            if collect:
                host.storage.collect_garbage()

    def _stop(self, action: Action) -> None:
        assert action.vm is not None
        self.halt(action.vm)
        self.release(action.vm, collect=True)
        Path(action.vm.guest_socket).unlink(missing_ok=True)

    def _remove(self, action: Action) -> None:
        assert action.vm is not None
        self.halt(action.vm)
        self.release(action.vm, collect=True)
        disks.move_to_attic(action.vm, self.attic)

    def _update(self, action: Action) -> None:
        """Stop, snapshot data disks, boot the new version; if it never becomes ready, roll back:
        the old version's program overlays, the data disks as they were, and the old VM again."""
        assert action.vm is not None and action.old is not None
        old_host = self.hosts(action.old.host)
        with nullcontext() if old_host.is_test else old_host.storage.in_use():
            self._replace(action)

    def _replace(self, action: Action) -> None:
        assert action.vm is not None and action.old is not None
        self.halt(action.old)
        self.release(action.old)
        snapshots = disks.snapshot_data(action.old)
        try:
            self.boot(action.vm, lambda: self.report(action, "configure"))
        except UtilityError as exc:
            self.halt(action.vm)
            self.release(action.vm, keep_data=False)  # the snapshot is what comes back
            disks.restore_data(snapshots)
            self.boot(action.old)
            self.report(Action(op=Op.START, key=action.key, vm=action.old), "done")
            if isinstance(exc, Cancelled):
                raise  # never configured: back on the old version, as if never touched
            old = (action.old.origin or {}).get("version")
            raise RolledBack(
                f"{exc}; rolled back to {'v' + old if old else 'the previous image'}"
                f" with its data disks as before the update"
            ) from None
        disks.drop_snapshots(snapshots)

    def _resend(self, action: Action) -> None:
        vm = action.vm
        assert vm is not None
        host = self.hosts(vm.host)
        if host.is_test:
            return
        transport = host.open_serial(vm.domain, "serial1") if host.channel_over_stream else None
        guest_channel.resend(vm.guest_socket, vm.param_map(), self.timeouts.ready, transport)
