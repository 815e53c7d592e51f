"""Failures and restarts through the HTTP API on simulated (`test:` driver) hosts.

A VM "crashes" when the test destroys its domain behind the utility's back (the test driver's
instance lives in this process, so the test reaches it through the manager's own connection).
A host becomes unreachable through the hosts adapter's injectable fault (`host_fault`): every
call to it raises `HostUnreachable`, as a lost `qemu+ssh` connection does; this is the one part
not real here. Time for restart backoff is an injected clock; the watchdog's rounds are called
directly (`manager.check()`), as its thread would call them, so no test sleeps.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import REPO_ROOT
from utility.adapters.bundles import read_bundle
from utility.adapters.libvirt_host import start_event_loop
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.adapters.store import ACTIVE
from utility.service.manager import ClusterManager
from utility.service.watchdog import Backoff
from utility.web.api import create_app

PAPER = REPO_ROOT / "examples" / "paper"


@dataclass
class Rig:
    """A manager on three test hosts, its API, a settable clock and a set of cut-off hosts."""

    manager: ClusterManager
    api: FlaskClient
    tmp: Path
    now: list[float] = field(default_factory=lambda: [1000.0])
    cut: set[str] = field(default_factory=set)

    def start(self, name: str, restart: Any = None, code: int = 200) -> dict[str, Any]:
        made = self.tmp / name / "AcmeGroupware.cvl"
        cvl = made if made.exists() else paper_tree(PAPER, self.tmp / name)
        body: dict[str, Any] = {"bundle": read_bundle(cvl).to_wire(), "name": name}
        if restart is not None:
            body["restart"] = restart
        answer = self.api.post("/v1/vaps/start", json=body)
        assert answer.status_code == code, answer.get_json()
        return dict(answer.get_json())

    def status(self, cvl: str) -> dict[str, Any]:
        answer = self.api.get("/v1/vaps", query_string={"name": cvl})
        assert answer.status_code == 200, answer.get_json()
        return dict(answer.get_json()[0])

    def component(self, cvl: str, path: str) -> dict[str, Any]:
        return next(c for c in self.status(cvl)["components"] if c["path"] == path)

    def crash(self, cvl: str, path: str) -> None:
        """Destroy the component's domain behind the utility's back."""
        c = self.component(cvl, path)
        self.manager.host(c["host"]).connection().lookupByName(c["domain"]).destroy()

    def history(self, cvl: str) -> list[dict[str, Any]]:
        return [h for h in self.api.get("/v1/history").get_json() if h["name"] == cvl]


def make_rig(tmp: Path, hosts: int = 3, max_vms: int = 8, backoff: Backoff | None = None) -> Rig:
    now = [1000.0]
    cut: set[str] = set()
    manager = ClusterManager(
        tmp / "state",
        host_fault=lambda name: name in cut,
        clock=lambda: now[0],
        backoff=backoff,
    )
    api = create_app(manager, require_token=False).test_client()
    for i in range(1, hosts + 1):
        uri = simulated_host_uri(tmp, f"h{i}-{tmp.name}", memory_mib=4096)
        body = {"name": f"h{i}", "uri": uri, "memory": "1G", "max_vms": max_vms}
        assert api.post("/v1/hosts", json=body).status_code == 201
    assert api.post("/v1/vlans", json={"range": "100-163"}).status_code == 200
    assert api.post("/v1/publicips", json={"range": "192.0.2.10-192.0.2.20"}).status_code == 200
    return Rig(manager, api, tmp, now, cut)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(tmp_path)
    yield made
    made.manager.close()


def live_allocations_are_unique_and_held(rig: Rig) -> None:
    """Every VM that may run (not stopped/crashed/dead) of an active VAP has its IPs, MACs and
    VLANs held in the database by its own VAP, and no two hold the same one."""
    store = rig.manager.store
    held = {(a[0], a[2]) for a in store.all_addresses()}
    vlans = {(v["vlan"], v["vap_id"]) for v in store.pools()["vlans"] if v["vap_id"]}
    seen: Counter[str] = Counter()
    for vap in store.vaps(ACTIVE):
        status = rig.manager.parts.status.vap_status(vap.id)
        for vlan in status["vlans"].values():
            assert (vlan, vap.id) in vlans
            seen[f"vlan {vlan}"] += 1
        for c in status["components"]:
            if c["state"] in ("stopped", "crashed", "dead"):
                continue
            for i in c["interfaces"]:
                for address in (i["ip"], i["mac"]):
                    assert any(a.lower() == address.lower() and v == vap.id for a, v in held)
                    seen[address.lower()] += 1
    assert [k for k, n in seen.items() if n > 1] == []


# -- crashes and restarts --------------------------------------------------------------------------


def test_a_vm_that_stops_on_its_own_is_marked_crashed_and_restarted(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    assert rig.status(cvl)["restart"] == "always"
    before = rig.component(cvl, "d")
    rig.crash(cvl, "d")
    report = rig.manager.check()
    assert report["crashed"] == [f"{cvl}:d"] and report["restarted"] == [f"{cvl}:d"]
    after = rig.component(cvl, "d")
    assert after["state"] == "running" and after["restarts"] == 1
    assert after["interfaces"] == before["interfaces"]  # same addresses
    assert after["boot_seq"] > before["boot_seq"]
    domain = rig.manager.host(after["host"]).domain(after["domain"])
    assert domain is not None and domain.running
    assert [c["state"] for c in rig.status(cvl)["components"]] == ["running"] * 3
    triggers = [h["trigger"] for h in rig.history(cvl)]
    assert "crash" in triggers and "restart" in triggers
    live_allocations_are_unique_and_held(rig)
    assert rig.manager.check()["restarted"] == []  # nothing more to do


def test_restart_never_leaves_the_vm_crashed(rig: Rig) -> None:
    cvl = rig.start("acme", restart="never")["vap"]
    rig.crash(cvl, "l")
    assert rig.manager.check() == {
        "crashed": [f"{cvl}:l"],
        "restarted": [],
        "gave_up": [],
        "waiting": [],
        "stopped": [],
    }
    rig.now[0] += 3600
    assert rig.manager.check()["restarted"] == []
    status = rig.status(cvl)
    assert status["restart"] == "never" and status["status"] == "running"
    assert rig.component(cvl, "l")["state"] == "crashed"
    assert rig.component(cvl, "l")["uptime"] is None


@pytest.mark.parametrize("hostile", ["sometimes", 1, True, ["always"], "always\x00", "x" * 5000])
def test_an_unknown_restart_policy_is_refused_and_nothing_starts(rig: Rig, hostile: Any) -> None:
    answer = rig.start("acme", restart=hostile, code=400)
    assert "restart" in answer["error"]
    assert "sometimes" not in answer["error"]  # the value is not echoed
    assert rig.api.get("/v1/vaps").get_json() == []
    assert rig.manager.store.all_addresses() == []


def test_restarts_back_off_exponentially_and_stop_after_the_limit(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, backoff=Backoff(base=1.0, cap=2.0, limit=4, window=100.0))
    cvl = rig.start("acme")["vap"]
    restarted_at = []
    # crash again right after every restart; the clock says when each round runs
    for t in (0.0, 0.5, 1.0, 2.9, 3.0, 4.9, 5.0, 50.0):
        rig.now[0] = 1000.0 + t
        if rig.component(cvl, "f")["state"] == "running":
            rig.crash(cvl, "f")
        report = rig.manager.check()
        if report["restarted"]:
            restarted_at.append(t)
        if t == 50.0:
            assert report["gave_up"] == [f"{cvl}:f"]
    # delays after attempts 1, 2, 3: 1 s, 2 s, 2 s (capped); the 5th attempt is over the limit
    assert restarted_at == [0.0, 1.0, 3.0, 5.0]
    assert rig.component(cvl, "f")["state"] == "crashed"
    assert rig.component(cvl, "f")["restarts"] == 4
    assert any("stays crashed: 4 restarts" in h["result"] for h in rig.history(cvl))
    rig.now[0] = 1000.0 + 200.0  # the window has passed, but it gave up: it stays crashed
    assert rig.manager.check()["restarted"] == []
    # stopped and started again, it keeps its id (VAPs are named): a new run, a clean slate
    assert rig.api.post("/v1/vaps/stop", json={"name": cvl}).status_code == 200
    again = rig.start("acme")
    assert again["vap"] == cvl and rig.component(cvl, "f")["restarts"] == 0
    rig.crash(cvl, "f")
    assert rig.manager.check()["restarted"] == [f"{cvl}:f"]
    rig.manager.close()


def test_only_running_vms_count_against_host_capacity(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, hosts=1, max_vms=5)
    first = rig.start("first", restart="never")["vap"]
    refused = rig.start("second", code=422)  # 3 + 3 VMs > 5
    assert "h1" in str(refused) or "capacity" in str(refused).lower() or refused["error"]
    hosts = rig.api.get("/v1/hosts").get_json()
    assert hosts[0]["vms"] == 3
    rig.crash(first, "d")
    rig.manager.check()
    hosts = rig.api.get("/v1/hosts").get_json()
    assert hosts[0]["vms"] == 2
    second = rig.start("second2")  # 2 running + 3 fit in 5
    assert second["status"] == "running"
    assert rig.api.get("/v1/hosts").get_json()[0]["vms"] == 5
    live_allocations_are_unique_and_held(rig)
    rig.manager.close()


def test_a_crashed_vm_whose_slot_was_taken_waits_instead_of_overcommitting(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, hosts=1, max_vms=5)
    first = rig.start("first")["vap"]
    rig.crash(first, "d")
    # as a check that saw the crash records it, before any restart was due
    rig.manager.store.set_vm(rig.status(first)["id"], "d", "crashed")
    second = rig.start("second")  # takes the freed slot: 2 + 3 = 5
    assert second["status"] == "running"
    report = rig.manager.check()
    assert report["restarted"] == [] and report["waiting"] == [f"{first}:d"]
    assert rig.component(first, "d")["state"] == "crashed"
    assert rig.api.get("/v1/hosts").get_json()[0]["vms"] == 5
    assert rig.api.post("/v1/vaps/stop", json={"name": second["vap"]}).status_code == 200
    assert rig.manager.check()["restarted"] == [f"{first}:d"]
    assert rig.api.get("/v1/hosts").get_json()[0]["vms"] == 3
    rig.manager.close()


def test_lifecycle_events_wake_the_watchdog_without_waiting_for_the_interval(
    tmp_path: Path,
) -> None:
    assert start_event_loop()  # before the connections open, as the daemon does
    rig = make_rig(tmp_path)
    stopping = threading.Event()
    thread = threading.Thread(
        target=rig.manager.watchdog.run_forever, args=(3600.0, stopping), daemon=True
    )
    thread.start()
    try:
        cvl = rig.start("acme")["vap"]
        rig.crash(cvl, "d")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # polls for a change that must come, then checks
            d = rig.component(cvl, "d")
            if d["restarts"] == 1 and d["state"] == "running":
                break
            time.sleep(0.05)
        assert rig.component(cvl, "d")["restarts"] == 1
        assert rig.component(cvl, "d")["state"] == "running"
    finally:
        stopping.set()
        rig.manager.watchdog.wake.set()
        thread.join(5)
        rig.manager.close()


# -- unreachable hosts -----------------------------------------------------------------------------


def test_stop_on_an_unreachable_host_keeps_allocations_until_the_host_answers(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    other = rig.start("other")["vap"]
    d = rig.component(cvl, "d")
    held_before = {a for a in rig.manager.store.all_addresses() if a[2] == rig.status(cvl)["id"]}
    rig.cut.add(d["host"])
    answer = rig.api.post("/v1/vaps/stop", json={"name": cvl})
    assert answer.status_code == 200
    assert any("pending" in p for p in answer.get_json()["problems"])
    status = rig.status(cvl)
    assert status["status"] == "stopping" and d["host"] in status["error"]
    states = {c["path"]: c["state"] for c in status["components"]}
    assert states["d"] == "unknown"
    assert {states[p] for p in states if rig.component(cvl, p)["host"] != d["host"]} <= {"stopped"}
    vap_id = status["id"]
    assert {a for a in rig.manager.store.all_addresses() if a[2] == vap_id} == held_before
    assert status["vlans"]  # still held
    live_allocations_are_unique_and_held(rig)
    # the unknown VM counts against its host while it may run
    assert any(h["vms"] >= 1 for h in rig.api.get("/v1/hosts").get_json() if h["name"] == d["host"])
    assert rig.manager.check()["stopped"] == []  # still cut off: still pending
    assert rig.status(cvl)["status"] == "stopping"
    rig.cut.clear()
    third = rig.start("third")  # before the stop completes: other addresses, never the held ones
    assert set(third["vlans"].values()).isdisjoint(status["vlans"].values())
    live_allocations_are_unique_and_held(rig)
    assert rig.manager.check()["stopped"] == [cvl]
    status = rig.status(cvl)
    assert status["status"] == "stopped" and status["vlans"] == {}
    assert [a for a in rig.manager.store.all_addresses() if a[2] == vap_id] == []
    assert rig.manager.host(d["host"]).domain(d["domain"]) is None
    assert any("pending stop" in h["result"] for h in rig.history(cvl))
    assert rig.status(other)["status"] == "running"
    live_allocations_are_unique_and_held(rig)


def test_a_crash_is_not_seen_on_an_unreachable_host(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    d = rig.component(cvl, "d")
    rig.crash(cvl, "d")
    rig.cut.add(d["host"])
    assert rig.manager.check()["crashed"] == []
    assert rig.component(cvl, "d")["state"] == "running"  # nothing known: nothing changed
    rig.cut.clear()
    assert rig.manager.check()["crashed"] == [f"{cvl}:d"]


def test_host_dead_releases_a_pending_stop_and_is_recorded(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    d = rig.component(cvl, "d")
    rig.cut.add(d["host"])
    rig.api.post("/v1/vaps/stop", json={"name": cvl})
    vap_id = rig.status(cvl)["id"]
    held = [a for a in rig.manager.store.all_addresses() if a[2] == vap_id]
    assert held
    answer = rig.api.post(f"/v1/hosts/{d['host']}/dead")
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {"dead": [f"{cvl}:d"], "stopped": [cvl]}
    assert rig.status(cvl)["status"] == "stopped"
    assert [a for a in rig.manager.store.all_addresses() if a[2] == vap_id] == []
    assert any(
        h["trigger"] == "host-dead" and f"host {d['host']} dead: d lost" in h["result"]
        for h in rig.history(cvl)
    )
    assert rig.api.post("/v1/hosts/nosuch/dead").status_code == 404


def test_host_dead_under_a_running_vap_loses_its_vm_for_good(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    d = rig.component(cvl, "d")
    rig.cut.add(d["host"])
    before = {h["name"]: h["vms"] for h in rig.api.get("/v1/hosts").get_json()}
    assert rig.api.post(f"/v1/hosts/{d['host']}/dead").get_json()["dead"] == [f"{cvl}:d"]
    assert rig.component(cvl, "d")["state"] == "dead"
    after = {h["name"]: h["vms"] for h in rig.api.get("/v1/hosts").get_json()}
    assert after[d["host"]] == before[d["host"]] - 1  # no longer counts
    rig.cut.clear()
    assert rig.manager.check()["restarted"] == []  # dead is not crashed: never restarted
    assert rig.status(cvl)["status"] == "running"
    live_allocations_are_unique_and_held(rig)


def test_only_an_administrator_may_declare_a_host_dead(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    tcp = create_app(rig.manager, require_token=True).test_client()
    token = rig.api.post("/v1/tokens", json={"name": "alice", "role": "user"}).get_json()["token"]
    cvl = rig.start("acme")["vap"]
    d = rig.component(cvl, "d")
    answer = tcp.post(f"/v1/hosts/{d['host']}/dead", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 403
    assert rig.component(cvl, "d")["state"] == "running"
    assert rig.status(cvl)["status"] == "running"
    assert not any(h["trigger"] == "host-dead" for h in rig.history(cvl))
    rig.manager.close()


# -- interrupted starts and updates ----------------------------------------------------------------


@pytest.mark.parametrize("status", ["starting", "updating"])
def test_an_interrupted_operation_is_reconciled_per_component(rig: Rig, status: str) -> None:
    """As a daemon killed while booting `l` leaves it: the VAP `starting`/`updating`, `l`'s
    record `booting` and its domain gone, `d` and `f` running as before."""
    cvl = rig.start("acme")["vap"]
    before = {c["path"]: c for c in rig.status(cvl)["components"]}
    vap_id = rig.status(cvl)["id"]
    addresses = sorted(rig.manager.store.all_addresses())
    rig.manager.store.set_vap(vap_id, status=status)
    rig.manager.store.set_vm(vap_id, "l", "booting")
    rig.crash(cvl, "l")
    report = rig.manager.reconcile()
    assert report["recovered"] == [cvl] and report["rolled_back"] == []
    after = {c["path"]: c for c in rig.status(cvl)["components"]}
    assert rig.status(cvl)["status"] == "running"
    assert {p: c["state"] for p, c in after.items()} == dict.fromkeys("dfl", "running")
    for untouched in ("d", "f"):  # kept running, never rebooted
        assert after[untouched]["boot_seq"] == before[untouched]["boot_seq"]
        assert after[untouched]["started"] == before[untouched]["started"]
    assert after["l"]["boot_seq"] > before["l"]["boot_seq"]
    assert after["l"]["interfaces"] == before["l"]["interfaces"]
    assert sorted(rig.manager.store.all_addresses()) == addresses
    assert any("per component" in h["result"] for h in rig.history(cvl))
    live_allocations_are_unique_and_held(rig)


def test_an_interrupted_update_with_an_unreachable_host_keeps_everything(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    vap_id = rig.status(cvl)["id"]
    addresses = sorted(rig.manager.store.all_addresses())
    rig.manager.store.set_vap(vap_id, status="updating")
    rig.cut.add(rig.component(cvl, "l")["host"])
    report = rig.manager.reconcile()
    assert report["recovered"] == [] and report["rolled_back"] == [cvl]
    status = rig.status(cvl)
    assert status["status"] == "stopping"  # held: it may still run there
    assert rig.component(cvl, "l")["state"] == "unknown"
    assert sorted(rig.manager.store.all_addresses()) == addresses
    rig.cut.clear()
    assert rig.manager.check()["stopped"] == [cvl]
    assert rig.manager.store.all_addresses() == []
