"""Host failure, fencing, routing around failure, drain, move and rebalance on test-driver hosts.

The hosts are libvirt `test:` driver instances in this process (real libvirt, no guests). A
host "fails" through the hosts adapter's injectable fault (every call raises `HostUnreachable`,
as a lost `qemu+ssh` connection does) while its in-memory instance, and so its domains, live
on: exactly a partitioned host whose VMs may still run, which is what fencing is for. Time is
an injected clock; watchdog rounds are called directly. The test driver cannot migrate, so
moves use a stand-in migrator at the adapter boundary (`CopyMigrator`: define the domain on the
target from the source's XML, destroy it on the source); the real one runs in the lab test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_utility_watchdog import Rig, live_allocations_are_unique_and_held, make_rig
from utility.adapters.libvirt_host import LibvirtHost
from utility.adapters.migration import Migrated, MigrationFailed
from utility.core import overlay
from utility.core.desired_state import Interface, Network, VapState, Vm
from utility.core.moves import Resident, next_health, rebalance, relocate
from utility.core.placement import HostRoom, VmDemand, place
from utility.errors import PlacementError
from utility.service.policy import Caller

MiB = 1 << 20


class CopyMigrator:
    """Stand-in for live migration on test hosts (see the module docstring)."""

    def __init__(self) -> None:
        self.fail = False
        self.calls: list[tuple[str, str, str]] = []

    def migrate(
        self,
        source: LibvirtHost,
        target: LibvirtHost,
        domain: str,
        vm: Vm | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Migrated:
        self.calls.append((source.name, target.name, domain))
        if self.fail:
            raise MigrationFailed(f"migration of {domain} failed; it still runs on {source.name}")
        if progress is not None:  # as the job-statistics poller reports a live migration
            progress(40 * MiB, 100 * MiB)
            progress(100 * MiB, 100 * MiB)
        dom = source.connection().lookupByName(domain)
        target.connection().createXML(dom.XMLDesc(0), 0)
        dom.destroy()
        return Migrated("stand-in", downtime_ms=7)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(tmp_path)
    made.manager.mover.migrator = CopyMigrator()
    yield made
    made.manager.close()


def running_on(rig: Rig, domain: str) -> list[str]:
    """The hosts whose libvirt runs `domain` (looked at behind any fault)."""
    out = []
    for row in rig.manager.store.hosts():
        conn = rig.manager.hosts_service.pool.get(row.name, row.uri)._conn
        if conn is None:
            continue
        if any(d.name() == domain and d.isActive() for d in conn.listAllDomains(0)):
            out.append(row.name)
    return out


def still(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The components of a status without their uptime (time passes)."""
    return [{k: v for k, v in c.items() if k != "uptime"} for c in status["components"]]


def health(rig: Rig) -> dict[str, str]:
    return {h["name"]: h["health"] for h in rig.api.get("/v1/hosts").get_json()}


# -- pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "answers", "silent", "expected"),
    [
        ("up", True, 0, "up"),
        ("up", False, 0, "suspect"),
        ("suspect", False, 29.9, "suspect"),
        ("suspect", False, 30, "failed"),
        ("suspect", True, 0, "up"),
        ("failed", False, 999, "failed"),
        ("failed", True, 0, "fencing"),
        ("fencing", True, 0, "fencing"),
        ("fencing", False, 0, "failed"),
    ],
)
def test_health_steps(previous: str, answers: bool, silent: float, expected: str) -> None:
    assert next_health(previous, answers, silent, 30.0) == expected


def _vm(path: str, host: str, net: str) -> Vm:
    iface = Interface("eth0", f"52:54:00:00:00:0{len(path)}", "10.0.0.5", "255.255.255.0", net, "s")
    return Vm(
        path,
        "T",
        None,
        host,
        f"col-1-{path}",
        64 * MiB,
        1,
        "/d",
        "/s",
        (),
        (iface,),
        (),
        (),
        (),
        (),
        (),
    )


def test_relocate_keeps_names_and_addresses_and_networks_follow() -> None:
    state = VapState(
        "/x.cvl",
        "A",
        {"s": 100},
        (_vm("a", "h1", "col-v100"), _vm("bb", "h1", "col-v100")),
        (Network("col-v100", "col-v100", "h1", "s", 100),),
    )
    moved = relocate(state, {"a": "h2"})
    a = moved.vm("a")
    assert a is not None and a.host == "h2"
    assert (a.domain, a.interfaces) == (state.vms[0].domain, state.vms[0].interfaces)
    assert [(n.host, n.name) for n in moved.networks] == [("h1", "col-v100"), ("h2", "col-v100")]
    both = relocate(state, {"a": "h2", "bb": "h2"})
    assert [(n.host, n.name) for n in both.networks] == [("h2", "col-v100")]


def test_a_relocated_network_takes_its_new_host_s_underlay() -> None:
    """A segment's network made on the host a VM moves to carries that host's underlay, not the
    old host's: otherwise every peer floods to the old host (a failed one) and the VM is cut off."""
    state = VapState(
        "/x.cvl",
        "A",
        {"s": 100},
        (_vm("a", "h1", "col-v100"), _vm("bb", "h2", "col-v100")),
        (
            Network("col-v100", "col-v100", "h1", "s", 100, "192.0.2.1"),
            Network("col-v100", "col-v100", "h2", "s", 100, "192.0.2.2"),
        ),
    )
    moved = relocate(state, {"a": "h3"}, {"h3": "192.0.2.3"})
    assert {(n.host, n.underlay) for n in moved.networks} == {
        ("h2", "192.0.2.2"),
        ("h3", "192.0.2.3"),
    }
    assert overlay.peers(moved.networks)[("h2", "col-v100")] == ("192.0.2.3",)
    back = relocate(moved, {"a": "h2"})  # a host the state knows keeps its own underlay
    assert {(n.host, n.underlay) for n in back.networks} == {("h2", "192.0.2.2")}


def test_placement_never_uses_an_unavailable_host_and_says_so() -> None:
    rooms = [HostRoom("h1", 4096 * MiB, 8, available=False), HostRoom("h2", 128 * MiB, 8)]
    assert place([VmDemand("a", 64 * MiB)], rooms) == {"a": "h2"}
    with pytest.raises(PlacementError, match="hosts not taking VMs: h1"):
        place([VmDemand("a", 64 * MiB), VmDemand("b", 100 * MiB)], rooms)
    with pytest.raises(PlacementError, match="no host takes new VMs"):
        place([VmDemand("a", 64 * MiB)], rooms[:1])


def test_rebalance_evens_memory_and_stops() -> None:
    rooms = [
        HostRoom("h1", 1024 * MiB, 8, used_memory=768 * MiB, used_vms=3),
        HostRoom("h2", 1024 * MiB, 8),
        HostRoom("h3", 1024 * MiB, 8, available=False),
    ]
    residents = [Resident(f"v:{i}", "h1", 256 * MiB) for i in range(3)]
    moves = rebalance(residents, rooms, "spread")
    assert [(m.source, m.target) for m in moves] == [("h1", "h2")]  # 512/256, not 256/512 back
    assert moves[0].describe().startswith("→ v:0 h1 → h2")
    assert rebalance(residents, rooms, "pack") == []
    even = [Resident("v:a", "h1", 256 * MiB), Resident("v:b", "h2", 256 * MiB)]
    rooms_even = [
        HostRoom("h1", 1024 * MiB, 8, 256 * MiB, 1),
        HostRoom("h2", 1024 * MiB, 8, 256 * MiB, 1),
    ]
    assert rebalance(even, rooms_even, "spread") == []


# -- failure detection, routing around, fencing ------------------------------------------------


def test_a_silent_host_is_suspect_then_failed_its_vms_restart_elsewhere_and_it_is_fenced(
    rig: Rig,
) -> None:
    cvl = rig.start("acme")["vap"]
    victim = rig.component(cvl, "d")
    dead_host = victim["host"]
    before = {c["path"]: c for c in rig.status(cvl)["components"]}
    rig.cut.add(dead_host)

    report = rig.manager.check()
    assert report.get("suspect") == [dead_host]
    assert health(rig)[dead_host] == "suspect"
    assert rig.component(cvl, "d")["state"] == "running"  # not yet: within the grace period
    assert rig.component(cvl, "d")["host_health"] == "suspect"  # but never silently

    rig.now[0] += 31
    report = rig.manager.check()
    assert report["failed"] == [dead_host]
    assert report["moved"] == [f"{cvl}:d"]
    after = rig.component(cvl, "d")
    assert after["state"] == "running" and after["host"] != dead_host
    assert after["interfaces"] == before["d"]["interfaces"]  # same MACs and addresses
    assert after["domain"] == before["d"]["domain"]
    assert "the utility's copy" in after["restored"]["source"]
    assert running_on(rig, after["domain"]) == sorted([dead_host, after["host"]])  # stale twin
    for path in ("l", "f"):
        assert rig.component(cvl, path)["host"] == before[path]["host"]  # untouched
    live_allocations_are_unique_and_held(rig)
    triggers = [h["trigger"] for h in rig.history(cvl)]
    assert triggers.count("host-failed") == 2  # lost, then restarted
    events = [e["text"] for e in rig.manager.store.events()]
    assert f"host {dead_host}: suspect -> failed" in events

    second = rig.start("second")["vap"]  # nothing new is placed on the failed host
    assert dead_host not in {c["host"] for c in rig.status(second)["components"]}

    rig.cut.discard(dead_host)
    report = rig.manager.check()
    assert report["fenced"] == [dead_host]
    assert health(rig)[dead_host] == "up"
    assert running_on(rig, after["domain"]) == [after["host"]]  # never twice
    assert any(h["trigger"] == "fenced" for h in rig.history(cvl))
    assert rig.manager.check().get("fenced") is None


def test_a_host_that_answers_within_the_grace_period_loses_nothing(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    host = rig.component(cvl, "l")["host"]
    rig.cut.add(host)
    rig.manager.check()
    rig.now[0] += 20
    rig.manager.check()
    rig.cut.discard(host)
    rig.now[0] += 20
    rig.manager.check()
    assert health(rig)[host] == "up"
    assert rig.component(cvl, "l")["host"] == host
    assert rig.component(cvl, "l")["state"] == "running"


def test_lost_vms_stay_lost_without_room_and_come_back_after_fencing(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, hosts=1)
    try:
        cvl = rig.start("acme")["vap"]
        rig.cut.add("h1")
        rig.manager.check()
        rig.now[0] += 31
        report = rig.manager.check()
        assert report["failed"] == ["h1"] and "moved" not in report
        states = {c["path"]: c["state"] for c in rig.status(cvl)["components"]}
        assert states == {"d": "lost", "f": "lost", "l": "lost"}  # never shown running
        assert any("stay lost" in h["result"] for h in rig.history(cvl))
        rig.cut.discard("h1")
        rig.now[0] += 1
        report = rig.manager.check()
        assert report["fenced"] == ["h1"]
        # fenced: the stale domains were destroyed, then the watchdog booted them again
        assert sorted(report["restarted"]) == [f"{cvl}:d", f"{cvl}:f", f"{cvl}:l"]
        assert {c["state"] for c in rig.status(cvl)["components"]} == {"running"}
    finally:
        rig.manager.close()


# -- moves ---------------------------------------------------------------------------------------


def test_move_migrates_one_vm_and_keeps_its_addresses(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    before = rig.component(cvl, "d")
    target = next(h for h in ("h1", "h2", "h3") if h != before["host"])
    answer = rig.api.post("/v1/vaps/move", json={"name": cvl, "component": "d", "host": target})
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["downtime_ms"] == 7
    after = rig.component(cvl, "d")
    assert after["host"] == target and after["state"] == "running"
    assert after["interfaces"] == before["interfaces"]
    assert running_on(rig, before["domain"]) == [target]
    nets = {(n["host"], n["name"]) for n in rig.status(cvl)["networks"]}
    assert all((target, i["network"]) in nets for i in after["interfaces"])
    assert all((before["host"], i["network"]) not in nets for i in after["interfaces"]) or any(
        c["host"] == before["host"] for c in rig.status(cvl)["components"]
    )
    assert rig.manager.host(target).networks()  # the segment was brought up there
    assert any(h["trigger"] == "move" for h in rig.history(cvl))


def test_a_failed_migration_leaves_the_vm_where_it_was(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    before = rig.status(cvl)
    d = rig.component(cvl, "d")
    target = next(h for h in ("h1", "h2", "h3") if h != d["host"])
    nets_before = rig.manager.host(target).networks()
    rig.manager.mover.migrator.fail = True  # type: ignore[attr-defined]
    answer = rig.api.post("/v1/vaps/move", json={"name": cvl, "component": "d", "host": target})
    assert answer.status_code == 502 and "still runs on" in answer.get_json()["error"]
    assert still(rig.status(cvl)) == still(before)
    assert running_on(rig, d["domain"]) == [d["host"]]
    assert rig.manager.host(target).networks() == nets_before  # what was made for it is gone


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"component": "d", "host": "nowhere"}, 404),
        ({"component": "nothing", "host": "h1"}, 404),
        ({"component": "d", "host": "h1\x00"}, 400),
        ({"component": "d", "host": ["h1"]}, 400),
        ({"component": "d"}, 400),
    ],
)
def test_hostile_moves_are_refused_and_change_nothing(
    rig: Rig, body: dict[str, Any], code: int
) -> None:
    cvl = rig.start("acme")["vap"]
    before = rig.status(cvl)
    answer = rig.api.post("/v1/vaps/move", json={"name": cvl, **body})
    assert answer.status_code == code, answer.get_json()
    assert still(rig.status(cvl)) == still(before)
    assert rig.manager.mover.migrator.calls == []  # type: ignore[attr-defined]


def test_only_administrators_move_drain_and_rebalance(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    user = Caller("bob", "user")
    for call in (
        lambda: rig.manager.move(user, cvl, "d", "h1"),
        lambda: rig.manager.drain(user, "h1"),
        lambda: rig.manager.rebalance(user, True),
    ):
        with pytest.raises(Exception, match="administrator|may not|not allowed|admin"):
            call()
    assert not any(h["drained"] for h in rig.api.get("/v1/hosts").get_json())


def test_drain_moves_every_vm_off_and_takes_no_new_ones_until_undrained(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    host = rig.component(cvl, "d")["host"]
    answer = rig.api.post(f"/v1/hosts/{host}/drain")
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()
    assert [m["path"] for m in result["moved"]] == ["d"] and result["failed"] == []
    assert host not in {c["host"] for c in rig.status(cvl)["components"]}
    assert rig.manager.host(host).domains() == []
    second = rig.start("second")["vap"]
    assert host not in {c["host"] for c in rig.status(second)["components"]}
    assert rig.api.post(f"/v1/hosts/{host}/undrain").status_code == 200
    third = rig.start("third")["vap"]
    assert host in {c["host"] for c in rig.status(third)["components"]}  # emptiest again
    live_allocations_are_unique_and_held(rig)


def test_a_streamed_drain_reports_each_migrations_progress_then_the_result(rig: Rig) -> None:
    """`Accept: application/x-ndjson` (what `cui host drain` asks for): one progress line per
    statistics sample of each migration, labelled VAP:COMPONENT FROM → TO, in bytes; then the
    same result as the plain answer."""
    cvl = rig.start("acme")["vap"]
    host = rig.component(cvl, "d")["host"]
    answer = rig.api.post(f"/v1/hosts/{host}/drain", headers={"Accept": "application/x-ndjson"})
    assert answer.status_code == 200 and answer.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in answer.get_data(as_text=True).splitlines() if line]
    progress = [line["progress"] for line in lines if "progress" in line]
    target = next(c["host"] for c in rig.status(cvl)["components"] if c["path"] == "d")
    label = f"{cvl}:d {host} → {target}"
    assert progress == [
        {"label": label, "done": 40 * MiB, "total": 100 * MiB},
        {"label": label, "done": 100 * MiB, "total": 100 * MiB},
    ]
    assert "result" in lines[-1] and [m["path"] for m in lines[-1]["result"]["moved"]] == ["d"]


def _one_loaded_host_then_two_empty(tmp_path: Path) -> tuple[Rig, str]:
    """A rig whose three VMs all run on h1, then h2 and h3 registered empty."""
    rig = make_rig(tmp_path, hosts=1)
    rig.manager.mover.migrator = CopyMigrator()
    cvl = rig.start("acme")["vap"]
    for name in ("h2", "h3"):
        uri = rig.manager.store.hosts()[0].uri.replace("h1-", f"{name}-")
        Path(uri.removeprefix("test://")).write_text(
            Path(rig.manager.store.hosts()[0].uri.removeprefix("test://")).read_text()
        )
        body = {"name": name, "uri": uri, "memory": "1G", "max_vms": 8}
        assert rig.api.post("/v1/hosts", json=body).status_code == 201
    return rig, cvl


def test_automatic_rebalance_is_off_unless_asked_and_then_spreads(tmp_path: Path) -> None:
    import threading

    rig, cvl = _one_loaded_host_then_two_empty(tmp_path)
    stopping = threading.Event()
    try:
        loop = threading.Thread(target=rig.manager.mover.rebalance_forever, args=(0.01, stopping))
        loop.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if len({c["host"] for c in rig.status(cvl)["components"]}) == 3:
                break
            time.sleep(0.05)
        stopping.set()
        loop.join(5)
        assert not loop.is_alive()
        assert sorted(c["host"] for c in rig.status(cvl)["components"]) == ["h1", "h2", "h3"]
        assert any("2 VM(s) moved" in str(e["text"]) for e in rig.manager.store.events())
    finally:
        stopping.set()
        rig.manager.close()


def test_rebalance_dry_run_changes_nothing_then_the_plan_runs(tmp_path: Path) -> None:
    rig, cvl = _one_loaded_host_then_two_empty(tmp_path)
    try:
        before = rig.status(cvl)
        dry = rig.api.post("/v1/rebalance", json={"dry_run": True}).get_json()
        assert len(dry["lines"]) == 2 and not dry["applied"]
        assert still(rig.status(cvl)) == still(before)
        done = rig.api.post("/v1/rebalance", json={"dry_run": False}).get_json()
        assert done["failed"] == [] and len(done["moved"]) == 2
        hosts = sorted(c["host"] for c in rig.status(cvl)["components"])
        assert hosts == ["h1", "h2", "h3"]
        assert rig.api.post("/v1/rebalance", json={"dry_run": True}).get_json()["lines"] == []
        answer = rig.api.post("/v1/rebalance", json={"dry_run": "yes"})
        assert answer.status_code == 400
    finally:
        rig.manager.close()


# -- adapters: migration flags, the restore source, the schema step ------------------------------


def test_migration_flags_follow_the_domain_and_the_storage() -> None:
    import libvirt

    from utility.adapters.migration import LibvirtMigrator

    base = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
    persist = libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    assert LibvirtMigrator().flags(persistent=False) == base
    assert LibvirtMigrator().flags(persistent=True) == base | persist
    copying = LibvirtMigrator().flags(persistent=False, copy_disks=True)
    assert copying == base | libvirt.VIR_MIGRATE_NON_SHARED_INC


def test_the_restore_source_says_where_each_data_disk_came_from(tmp_path: Path) -> None:
    import dataclasses
    import time

    from utility.adapters.disks import BACKUP_SUFFIX
    from utility.adapters.restore import restore_data_disks
    from utility.core.desired_state import Disk

    held, kept, none = (tmp_path / f"{n}.qcow2" for n in ("held", "kept", "none"))
    held.write_bytes(b"data")
    Path(str(kept) + BACKUP_SUFFIX).write_bytes(b"before the update")
    vm = dataclasses.replace(
        _vm("a", "h1", "n"),
        disks=(
            Disk("vda", str(tmp_path / "p.qcow2"), "program", base="/b"),
            Disk("vdb", str(held), "data", 1),
            Disk("vdc", str(kept), "data", 1),
            Disk("vdd", str(none), "data", 1),
        ),
    )
    said = restore_data_disks(vm, time.time())
    assert "vdb: the utility's copy" in said
    assert "vdc: the copy kept before the last update" in said
    assert kept.read_bytes() == b"before the update"  # put back in place
    assert "vdd: a fresh empty disk" in said and "lost" in said
    assert "vda" not in said  # program disks are always fresh overlays
    assert restore_data_disks(dataclasses.replace(vm, disks=()), 0.0) == "no data disks"


def test_schema_step_4_adds_host_health_to_an_old_database(tmp_path: Path) -> None:
    import sqlite3

    from utility.adapters.db_check import SCHEMA_VERSION, migrate

    db = sqlite3.connect(tmp_path / "old.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE tokens (digest TEXT PRIMARY KEY, name TEXT, role TEXT)")
    db.execute("CREATE TABLE hosts (name TEXT PRIMARY KEY, uri TEXT NOT NULL)")  # every v3 has it
    db.execute("PRAGMA user_version = 3")
    assert migrate(db) == SCHEMA_VERSION >= 4
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"host_health", "vm_restores"} <= tables
    db.execute("INSERT INTO host_health (name, health) VALUES ('h1', 'failed')")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO host_health (name, health) VALUES ('h2', 'sleepy')")


def test_a_busy_vap_is_marked_lost_and_restarted_once_its_operation_ends(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    host = rig.component(cvl, "f")["host"]
    rig.cut.add(host)
    rig.manager.check()
    rig.now[0] += 31
    lock = rig.manager.parts.locks.for_path(cvl)
    with lock:  # a stop, start or update of this VAP is under way
        report = rig.manager.check()
        assert report["failed"] == [host] and "moved" not in report
        assert rig.component(cvl, "f")["state"] == "running"  # untouched while busy
    report = rig.manager.check()
    assert report["moved"] == [f"{cvl}:f"]
    assert rig.component(cvl, "f")["host"] != host
    assert rig.component(cvl, "f")["state"] == "running"


def test_the_pages_show_a_failed_host_and_where_restored_data_came_from(rig: Rig) -> None:
    cvl = rig.start("acme")["vap"]
    host = rig.component(cvl, "d")["host"]
    rig.cut.add(host)
    rig.manager.check()
    rig.now[0] += 31
    rig.manager.check()
    overview = rig.api.get("/ui/", headers={"Accept": "text/html"})
    assert overview.status_code == 200, overview.data[:300]
    page = overview.get_data(as_text=True)
    assert f'{host} <span class="badge health-failed">failed</span>' in page
    vap_id = rig.status(cvl)["id"]
    vap = rig.api.get(f"/ui/vaps/{vap_id}", headers={"Accept": "text/html"})
    assert vap.status_code == 200, vap.data[:300]
    assert "restored after its host failed; data: hdb: the utility" in vap.get_data(as_text=True)


def secret_appliance(tmp: Path) -> Path:
    """A one-VM appliance with a required sensitive parameter `pw`; the user's CVL file."""
    from utility.adapters.simulation import base_image, publisher_domain_xml

    app = tmp / "vap" / "Secret"
    app.mkdir(parents=True)
    base_image(app / "system.qcow2")
    (app / "x.vmx").write_text(publisher_domain_xml("s", 64))
    (app / "Secret.cvl").write_text(
        'Secret extends VMAppliance { var "required" "sensitive" pw; vm = "x.vmx"; }\n'
    )
    cvl = tmp / "vap" / "Mine.cvl"
    cvl.write_text(
        'import { url => "file:Secret", cvl => "Secret.cvl" } Secret;\nMine extends Secret { }\n'
    )
    return cvl


def test_a_vm_with_sensitive_values_is_restarted_elsewhere_only_while_the_daemon_holds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from utility.adapters.simulation import simulated_host_uri
    from utility.service.manager import ClusterManager

    admin = Caller("root", "admin")
    cvl = secret_appliance(tmp_path)
    now, cut = [1000.0], set[str]()
    state = tmp_path / "state"

    def manager() -> ClusterManager:
        return ClusterManager(state, host_fault=lambda name: name in cut, clock=lambda: now[0])

    first = manager()
    for name in ("h1", "h2", "h3"):
        first.add_host(admin, name, simulated_host_uri(tmp_path, name), 1 << 30, 4)
    first.add_vlans(admin, "100-101")
    first.add_public_ips(admin, "192.0.2.1-192.0.2.2")
    first.start(admin, str(cvl), {"pw": "hunter2"})
    booted: list[Any] = []
    apply = first.parts.applier.apply

    def spy(vap_id: int, current: Any, target: Any, **kwargs: Any) -> Any:
        booted.append(target)
        return apply(vap_id, current, target, **kwargs)

    monkeypatch.setattr(first.parts.applier, "apply", spy)
    (vap,) = first.status(admin)
    (vm,) = vap["components"]
    cut.add(vm["host"])
    first.check()
    now[0] += 31
    report = first.check()
    assert len(report["moved"]) == 1, report
    (moved,) = first.status(admin)[0]["components"]
    assert moved["state"] == "running" and moved["host"] != vm["host"]
    assert dict(booted[-1].vms[0].params)["pw"] == ("hunter2",)  # booted with the real value
    assert moved["params"]["pw"] != ["hunter2"]  # and shown masked, as before
    first.close()

    again = manager()  # the daemon restarted: the value is gone, the VM stays lost
    cut.add(moved["host"])
    again.check()
    now[0] += 31
    report = again.check()
    assert not report.get("moved"), report
    (after,) = again.status(admin)[0]["components"]
    assert after["state"] == "lost" and after["host"] == moved["host"]
    assert "held only in memory" in again.history(admin)[-1]["result"]
    again.close()
    for path in tmp_path.rglob("*"):  # the value never reached a file
        assert not path.is_file() or b"hunter2" not in path.read_bytes(), path


def test_a_crashed_vm_with_sensitive_values_is_restarted_with_them_until_the_daemon_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from utility.adapters.simulation import simulated_host_uri
    from utility.service.manager import ClusterManager

    admin = Caller("root", "admin")
    cvl = secret_appliance(tmp_path)
    now = [1000.0]
    state = tmp_path / "state"
    first = ClusterManager(state, clock=lambda: now[0])
    first.add_host(admin, "h1", simulated_host_uri(tmp_path, "h1"), 1 << 30, 4)
    first.add_vlans(admin, "100-101")
    first.add_public_ips(admin, "192.0.2.1-192.0.2.2")
    first.start(admin, str(cvl), {"pw": "hunter2"})
    restarted: list[Any] = []
    restart = first.parts.applier.restart

    def spy(vap_id: int, vm: Any) -> Any:
        restarted.append(vm)
        return restart(vap_id, vm)

    monkeypatch.setattr(first.parts.applier, "restart", spy)
    (vm,) = first.status(admin)[0]["components"]
    first.host("h1").connection().lookupByName(vm["domain"]).destroy()
    report = first.check()
    assert report["restarted"] and dict(restarted[-1].params)["pw"] == ("hunter2",), report
    assert first.status(admin)[0]["components"][0]["state"] == "running"
    first.close()

    again = ClusterManager(state, clock=lambda: now[0])  # the value is gone with the daemon
    # (and the domain with the test driver's in-memory host: it is seen crashed at once)
    report = again.check()
    assert report["crashed"] and report["gave_up"], report
    assert again.status(admin)[0]["components"][0]["state"] == "crashed"
    assert "held only in memory" in again.history(admin)[-1]["result"]
    again.close()
