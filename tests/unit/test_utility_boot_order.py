"""Boot order: overlapped boots hold each VM's PARAMS until its requirements are READY.

The executor, the planner and the guest channel are the real ones; only the host and the guest
are fakes (no libvirt domain or appliance image is needed to show ordering): `FakeHost` reads
the guest socket path from the real domain XML and starts a `FakeGuest` that binds that Unix
socket and speaks the agent's side of README's "Utility ↔ guest" contract (HELLO repeated until
PARAMS, then READY or FAILED after a configuration delay).
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from utility.adapters import disks
from utility.adapters.executor import (
    CPU_WEIGHT_DEFAULT,
    CPU_WEIGHT_HELD,
    CPU_WEIGHT_LEAF,
    Executor,
    Outcome,
    Timeouts,
)
from utility.core.desired_state import VapState, Vm
from utility.core.planner import diff
from utility.errors import UtilityError

BOOT = 0.3  # seconds from domain creation to the first HELLO
CONFIGURE = 0.2  # seconds from PARAMS to READY


class Log:
    """(time, event, vm path) in the order things happened, shared by host and guests."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def add(self, event: str, path: str) -> None:
        with self._lock:
            self.events.append((time.monotonic(), event, path))

    def at(self, event: str, path: str) -> float:
        return next(t for t, e, p in self.events if e == event and p == path)

    def has(self, event: str, path: str) -> bool:
        return any(e == event and p == path for _, e, p in self.events)


class FakeGuest(threading.Thread):
    """The agent's side of the channel: HELLO every 0.05 s until PARAMS, then READY/FAILED."""

    def __init__(self, sock_path: str, path: str, log: Log, fail: bool) -> None:
        super().__init__(daemon=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(sock_path)  # bound before create_domain returns, as qemu does
        self.server.listen(1)
        self.path, self.log, self.fail = path, log, fail
        self.stopped = threading.Event()

    def run(self) -> None:
        conn, _ = self.server.accept()
        conn.settimeout(0.05)
        time.sleep(BOOT)
        buf = b""
        while b"\n" not in buf and not self.stopped.is_set():
            try:
                conn.sendall(b"COLLECTIVE HELLO fake\n")
                buf += conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
        if self.stopped.is_set() or not buf.startswith(b"COLLECTIVE PARAMS "):
            return
        self.log.add("params", self.path)
        time.sleep(CONFIGURE)
        self.log.add("failed" if self.fail else "ready", self.path)
        conn.sendall(b"COLLECTIVE FAILED injected\n" if self.fail else b"COLLECTIVE READY\n")
        conn.close()


class LocalFiles:
    """The fake host's storage: the VM directory's files (as `disks` makes them for test hosts);
    the pools themselves are exercised on real libvirtds (integration tests)."""

    @staticmethod
    def prepare(vm: Vm) -> dict[str, str]:
        disks.prepare(vm)
        return {}

    @staticmethod
    def release(vm: Vm, keep_data: bool = True) -> None:
        return None

    @staticmethod
    def collect_garbage() -> list[str]:
        return []

    @staticmethod
    def in_use() -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


class FakeHost:
    """A non-test local host whose domains are `FakeGuest`s; records create and destroy."""

    is_test = False
    is_local = True
    channel_over_stream = False
    storage = LocalFiles()

    def __init__(self, log: Log, failing: set[str]) -> None:
        self.log, self.failing = log, failing
        self.guests: dict[str, FakeGuest] = {}

    def domain_type(self) -> str:
        return "kvm"

    def create_domain(self, xml: str) -> None:
        root = ET.fromstring(xml)
        name = root.findtext("name") or ""
        source = root.find("./devices/serial[@type='unix']/source")
        assert source is not None
        path = name.rsplit("-", 1)[-1]
        self.log.add("create", path)
        fails = path in self.failing
        self.failing.discard(path)  # only the first boot fails (a rollback's boot works)
        guest = FakeGuest(source.attrib["path"], path, self.log, fails)
        self.guests[name] = guest
        guest.start()

    def destroy_domain(self, name: str) -> bool:
        self.log.add("destroy", name.rsplit("-", 1)[-1])
        if name in self.guests:  # an update halts VMs this fake never started
            self.guests[name].stopped.set()
        return True

    def shutdown_domain(self, name: str, timeout: float) -> str:
        self.destroy_domain(name)
        return "clean"

    def set_cpu_weight(self, name: str, shares: int) -> bool:
        self.log.add(f"weight-{shares}", name.rsplit("-", 1)[-1])
        return True


def vm(root: Path, path: str, needs: tuple[str, ...] = (), version: str = "1") -> Vm:
    return Vm(
        path=path,
        type=path.upper(),
        origin={"version": version},
        host="h",
        domain=f"col-1-{path}",
        memory=64,
        vcpus=1,
        vm_dir=str(root / path),
        guest_socket=str(root / f"{path}.sock"),
        disks=(),
        interfaces=(),
        params=(("domain", ("acme.org",)),),
        sensitive=(),
        provides=(),
        requires=(),
        needs=needs,
    )


@pytest.fixture
def root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="boot-") as d:  # short: Unix socket paths ≤ 107
        yield Path(d)


def chain(root: Path, length: int) -> VapState:
    """v0 <- v1 <- … (each needs the one before) plus an independent VM `x`."""
    vms = [vm(root, f"v{i}", (f"v{i - 1}",) if i else ()) for i in range(length)]
    return VapState("a.cvl", "A", {}, (*vms, vm(root, "x")), ())


def run(
    root: Path,
    state: VapState,
    order: str,
    failing: frozenset[str] = frozenset(),
    workers: int = 8,
    current: VapState | None = None,
    log: Log | None = None,
) -> tuple[Outcome, Log]:
    log = log or Log()
    host = FakeHost(log, set(failing))
    executor = Executor(
        lambda _name: host,  # type: ignore[arg-type,return-value]
        1,
        Timeouts(ready=20, stop=5),
        root / "attic",
        report=lambda action, phase: log.add(
            f"report-{phase}", action.vm.path if action.vm else ""
        ),
        workers=workers,
        boot_order=order,
    )
    return executor.run(diff(current, state)), log


def assert_params_after_requirements_ready(state: VapState, log: Log) -> None:
    for v in state.vms:
        for need in v.needs:
            assert log.at("ready", need) < log.at("params", v.path), (v.path, need)


def test_overlapped_creates_every_domain_before_the_first_params(root: Path) -> None:
    state = chain(root, 3)
    outcome, log = run(root, state, "overlapped")
    assert outcome.ok and sorted(outcome.done) == ["vm:v0", "vm:v1", "vm:v2", "vm:x"]
    creates = [t for t, e, _ in log.events if e == "create"]
    first_params = min(t for t, e, _ in log.events if e == "params")
    assert len(creates) == 4 and max(creates) < first_params
    assert_params_after_requirements_ready(state, log)


def test_strict_boots_a_vm_only_after_its_requirements_are_ready(root: Path) -> None:
    state = chain(root, 3)
    outcome, log = run(root, state, "strict")
    assert outcome.ok and sorted(outcome.done) == ["vm:v0", "vm:v1", "vm:v2", "vm:x"]
    assert log.at("ready", "v0") < log.at("create", "v1")
    assert log.at("ready", "v1") < log.at("create", "v2")
    assert_params_after_requirements_ready(state, log)


@pytest.mark.parametrize("order", ["overlapped", "strict"])
def test_the_reports_bracket_what_the_guests_saw(root: Path, order: str) -> None:
    """`begin` before the domain exists, `configure` just before its PARAMS and after every
    requirement's READY, `done` after its READY: the host-clock record the utility keeps."""
    state = chain(root, 3)
    outcome, log = run(root, state, order)
    assert outcome.ok
    for v in state.vms:
        assert log.at("report-begin", v.path) < log.at("create", v.path)
        assert log.at("report-configure", v.path) < log.at("params", v.path)
        assert log.at("ready", v.path) < log.at("report-done", v.path)
        for need in v.needs:
            assert log.at("report-done", need) < log.at("report-configure", v.path)


def test_a_held_vm_boots_at_a_low_cpu_weight_until_what_it_waits_for_configures(
    root: Path,
) -> None:
    """Overlapped order: a VM that waits for others boots at a reduced weight (the VMs the chain
    waits for keep the CPU): one step down the chain (v1, waiting for v0 which waits for
    nothing) at the leaf weight, two or more steps down (v2) at the held weight. Each gets the
    default weight back once every VM it waits for was let go (their PARAMS sent), before their
    READY and its own PARAMS: just in time, so v2 stays low while v0 configures and v1 finishes
    booting. `x`, which waits for nothing and nothing waits for, boots at the leaf weight until
    it is READY; v0, which the chain starts with, and every VM in strict order, are never
    reweighted."""
    state = chain(root, 3)
    outcome, log = run(root, state, "overlapped")
    assert outcome.ok
    low, leaf = f"weight-{CPU_WEIGHT_HELD}", f"weight-{CPU_WEIGHT_LEAF}"
    normal = f"weight-{CPU_WEIGHT_DEFAULT}"
    for path, first in (("v1", leaf), ("v2", low)):
        before = f"v{int(path[1]) - 1}"
        assert log.at("create", path) < log.at(first, path) < log.at("report-configure", before)
        assert log.at("report-configure", before) < log.at(normal, path) < log.at("ready", before)
        assert log.at(normal, path) < log.at("params", path)
    assert not log.has(low, "v1") and not log.has(leaf, "v2")
    assert log.at(normal, "v2") > log.at("ready", "v0")  # not promoted with v1
    assert log.at("create", "x") < log.at(leaf, "x") < log.at("ready", "x") < log.at(normal, "x")
    assert not log.has(low, "x")
    assert not log.has(low, "v0") and not log.has(normal, "v0") and not log.has(leaf, "v0")
    _, strict = run(root, chain(root, 3), "strict")
    assert not [e for _, e, _ in strict.events if e.startswith("weight-")]


def test_a_chain_longer_than_the_pool_still_finishes_in_order(root: Path) -> None:
    state = chain(root, 5)
    outcome, log = run(root, state, "overlapped", workers=2)
    assert outcome.ok and len(outcome.done) == 6
    assert_params_after_requirements_ready(state, log)


@pytest.mark.parametrize("order", ["overlapped", "strict"])
def test_a_failed_requirement_stops_its_dependents_configuration(root: Path, order: str) -> None:
    state = chain(root, 3)
    outcome, log = run(root, state, order, failing=frozenset({"v0"}))
    assert outcome.failed == "vm:v0"
    assert outcome.error is not None and "injected" in outcome.error
    assert outcome.done == ["vm:x"] and outcome.notes == []
    assert not log.has("params", "v1") and not log.has("params", "v2")
    if order == "overlapped":  # booted, never configured, destroyed
        assert log.has("destroy", "v1") and log.has("destroy", "v2")
    else:  # never booted
        assert not log.has("create", "v1") and not log.has("create", "v2")


def test_the_outcome_of_a_failure_is_the_same_in_both_orders(root: Path) -> None:
    state = chain(root, 3)
    strict, _ = run(root, state, "strict", failing=frozenset({"v0"}))
    overlapped, _ = run(root, state, "overlapped", failing=frozenset({"v0"}))
    assert (overlapped.failed, overlapped.error, overlapped.done, overlapped.notes) == (
        strict.failed,
        strict.error,
        strict.done,
        strict.notes,
    )


def test_an_unknown_boot_order_is_refused_by_name(root: Path) -> None:
    with pytest.raises(UtilityError, match="boot order 'sideways' is not one of overlapped"):
        Executor(lambda _n: None, 1, Timeouts(), root, boot_order="sideways")  # type: ignore[arg-type,return-value]


def test_a_failed_update_of_a_requirement_leaves_dependents_on_their_old_version(
    root: Path,
) -> None:
    old = chain(root, 2)
    new = VapState(
        "a.cvl", "A", {}, tuple(vm(root, v.path, v.needs, version="2") for v in old.vms), ()
    )
    results = {}
    for order in ("strict", "overlapped"):
        outcome, log = run(root, new, order, failing=frozenset({"v0"}), current=old)
        results[order] = (outcome.failed, outcome.done, outcome.notes)
        assert outcome.failed == "vm:v0" and "rolled back" in (outcome.error or "")
        # v1 is configured once at most: by its old version, after v0's rollback was READY
        v1_params = [t for t, e, p in log.events if e == "params" and p == "v1"]
        assert all(t > log.at("failed", "v0") for t in v1_params)
        if order == "overlapped":
            assert len(v1_params) == 1 and log.has("destroy", "v1")
    assert results["overlapped"] == results["strict"]
