"""The cluster manager on simulated (`test:` driver) hosts: start, checks, placement, rollback.

Test hosts have no guest, so readiness is immediate; everything else is real: CVL evaluation,
qemu-img disks, SQLite state, libvirt domains and networks of the test driver.
"""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from utility.adapters.executor import Executor
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.errors import CheckFailed, Conflict, StartFailed, UtilityError
from utility.service.desired import Settings
from utility.service.manager import Caller, ClusterManager

ADMIN = Caller("root", "admin")
MiB = 1 << 20
PAPER = REPO_ROOT / "examples" / "paper"


def make_cluster(
    tmp: Path, hosts: int = 3, memory_mib: int = 1024, max_vms: int = 8, placement: str = "spread"
) -> ClusterManager:
    manager = ClusterManager(tmp / "state", Settings(placement=placement))
    for i in range(1, hosts + 1):
        uri = simulated_host_uri(tmp, f"h{i}-{tmp.name}", memory_mib=4096)
        manager.add_host(ADMIN, f"h{i}", uri, memory_mib * MiB, max_vms)
    manager.add_vlans(ADMIN, "100-163")
    manager.add_public_ips(ADMIN, "192.0.2.10-192.0.2.20")
    return manager


def storage(manager: ClusterManager) -> Path:
    """Where the utility keeps the only VAP's VM directories (not next to its CVL file)."""
    (vap,) = manager.store.vaps()
    return manager.parts.pipeline.vap_dir(vap.id)


def our_domains(manager: ClusterManager) -> list[str]:
    names = []
    for host in manager.store.hosts():
        names += [d.name for d in manager.host(host.name).domains() if d.name.startswith("col-")]
    return names


def our_networks(manager: ClusterManager) -> list[str]:
    names = []
    for host in manager.store.hosts():
        names += [n for n in manager.host(host.name).networks() if n.startswith("col-")]
    return names


@pytest.fixture
def acme(tmp_path: Path) -> Path:
    return paper_tree(PAPER, tmp_path / "acme")


@pytest.fixture
def cluster(tmp_path: Path) -> ClusterManager:
    manager = make_cluster(tmp_path)
    yield manager
    manager.close()


def test_acme_groupware_starts_addresses_propagate_and_stop_releases_everything(
    cluster: ClusterManager, acme: Path
) -> None:
    result = cluster.start(ADMIN, str(acme))
    assert result["status"] == "running"
    comps = {c["path"]: c for c in result["components"]}
    assert set(comps) == {"d", "l", "f"}
    vlan = result["vlans"][""]
    subnet = ipaddress.IPv4Network(f"10.{vlan >> 8}.{vlan & 255}.0/24")
    inside = {p: comps[p]["interfaces"][0] for p in ("d", "l", "f")}
    assert all(ipaddress.IPv4Address(i["ip"]) in subnet for i in inside.values())
    assert len({i["ip"] for i in inside.values()}) == 3
    macs = [i["mac"] for c in comps.values() for i in c["interfaces"]]
    assert len(set(macs)) == len(macs) == 4
    outside = comps["f"]["interfaces"][1]
    assert outside["name"] == "ethernet1" and outside["ip"] == "192.0.2.10"
    assert result["boot_order"].index("d") < result["boot_order"].index("l")
    # addresses reached the parameters that reference them (Figure 3)
    dnshosts = comps["d"]["params"]["dnshosts"]
    assert f"name=l&ip={inside['l']['ip'].replace('.', '%2E')}" in dnshosts
    services = comps["f"]["params"]["services"]
    assert f"port=53%2Fudp&ip={inside['d']['ip'].replace('.', '%2E')}" in services
    assert comps["l"]["params"]["ethernet0.ip"] == [inside["l"]["ip"]]
    # real domains, disks in the CVL file's directory, one subdirectory per component
    assert sorted(our_domains(cluster)) == ["col-1-d", "col-1-f", "col-1-l"]
    assert (storage(cluster) / "d" / "vda.qcow2").is_file()
    assert (storage(cluster) / "d" / "data-hda.qcow2").is_file() is False
    assert (storage(cluster) / "d" / "data-hdb.qcow2").is_file()  # ide0:1 -> hdb
    assert not (storage(cluster) / "f" / "data-hdb.qcow2").exists()  # Firewall has no data disk

    stopped = cluster.stop(ADMIN, str(acme))
    assert sorted(stopped["stopped"]) == ["d", "f", "l"]
    assert our_domains(cluster) == [] and our_networks(cluster) == []
    assert cluster.store.all_addresses() == []
    pools = cluster.store.pools()
    assert all(v["vap_id"] is None for v in pools["vlans"] + pools["public_ips"])
    assert cluster.status(ADMIN, str(acme))[0]["status"] == "stopped"
    assert (storage(cluster) / "d" / "data-hdb.qcow2").is_file()  # data disks are kept


def test_data_disks_are_never_touched_once_they_exist(cluster: ClusterManager, acme: Path) -> None:
    cluster.start(ADMIN, str(acme))
    data = storage(cluster) / "d" / "data-hdb.qcow2"
    before = data.stat().st_mtime_ns, data.read_bytes()
    cluster.stop(ADMIN, str(acme))
    cluster.start(ADMIN, str(acme))
    assert (data.stat().st_mtime_ns, data.read_bytes()) == before
    cluster.stop(ADMIN, str(acme))


def test_placement_spreads_over_three_small_hosts_and_refuses_clearly(tmp_path: Path) -> None:
    manager = make_cluster(tmp_path, hosts=3, memory_mib=100, max_vms=2)
    acme = paper_tree(PAPER, tmp_path / "acme", memory_mib=64)
    result = manager.start(ADMIN, str(acme))
    assert sorted(c["host"] for c in result["components"]) == ["h1", "h2", "h3"]
    other = paper_tree(PAPER, tmp_path / "other", memory_mib=64)
    with pytest.raises(CheckFailed) as err:
        manager.start(ADMIN, str(other), name="other")
    assert "no host has room for d (64MiB), f (64MiB), l (64MiB)" in str(err.value)
    assert "36MiB on host h1" in str(err.value)
    assert len(our_domains(manager)) == 3
    manager.close()


def test_pack_fills_one_host_first(tmp_path: Path) -> None:
    manager = make_cluster(tmp_path, hosts=3, memory_mib=256, max_vms=8, placement="pack")
    acme = paper_tree(PAPER, tmp_path / "acme", memory_mib=64)
    result = manager.start(ADMIN, str(acme))
    assert {c["host"] for c in result["components"]} == {"h1"}
    manager.close()


def write_broken(tmp_path: Path) -> Path:
    """d lacks its required domain, m requires SMTP that nobody provides."""
    tree = tmp_path / "broken"
    paper_tree(PAPER, tree)
    (tree / "Mailer").mkdir()
    (tree / "Mailer" / "Mailer.cvl").write_text(
        'Mailer extends VMAppliance { vm = "m.vmx"; requires = "SMTP"; }\n'
    )
    (tree / "Mailer" / "m.vmx").write_text((tree / "DNS" / "dns.vmx").read_text())
    (tree / "Mailer" / "system.qcow2").write_bytes((tree / "DNS" / "system.qcow2").read_bytes())
    cvl = tree / "Broken.cvl"
    cvl.write_text(
        'import { url => "file:DNS", cvl => "DNS.cvl" } DNS;\n'
        'import { url => "file:Mailer", cvl => "Mailer.cvl" } Mailer;\n'
        "Broken extends VANAppliance {\n  DNS d;\n  Mailer m;\n"
        '  d.dnshosts = "none";\n  vanIF = "m.ethernet0";\n}\n'
    )
    return cvl


def test_every_check_fails_together_before_anything_runs(
    cluster: ClusterManager, tmp_path: Path
) -> None:
    cvl = write_broken(tmp_path)
    cluster.blacklist_add(ADMIN, f"file://{cvl.parent / 'DNS'}", "all")
    with pytest.raises(CheckFailed) as err:
        cluster.start(ADMIN, str(cvl))
    problems = err.value.problems
    assert any("required parameter d.domain has no value" in p for p in problems)
    assert any("m requires 'SMTP' but no component provides it" in p for p in problems)
    assert any(p.endswith("is blacklisted by the administrator") and "DNS" in p for p in problems)
    assert our_domains(cluster) == [] and cluster.store.all_addresses() == []
    assert not (tmp_path / "state" / "vaps").exists()  # no VM directory was made anywhere
    assert not (cvl.parent / "d").exists() and not (cvl.parent / "m").exists()


@pytest.mark.parametrize("problem", ["blacklist", "requires", "required"])
def test_each_check_alone_refuses_the_start(
    cluster: ClusterManager, tmp_path: Path, problem: str
) -> None:
    acme = paper_tree(PAPER, tmp_path / "acme")
    if problem == "blacklist":
        cluster.blacklist_add(ADMIN, f"file://{acme.parent / 'OpenLDAP'}", "all")
        expected = "OpenLDAP version unversioned is blacklisted"
    elif problem == "requires":
        dns = acme.parent / "DNS" / "DNS.cvl"
        dns.write_text(dns.read_text().replace('provides = "DNS";', 'provides = "NAMES";'))
        expected = "l requires 'DNS' but no component provides it"
    else:
        acme.write_text(acme.read_text().replace('domain = "acme.org";', ""))
        expected = "required parameter domain has no value"
    with pytest.raises(CheckFailed, match=expected):
        cluster.start(ADMIN, str(acme))
    assert our_domains(cluster) == []


def test_a_failure_mid_start_rolls_back_and_keeps_data_disks(
    cluster: ClusterManager, acme: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_boot = Executor.boot

    def failing_boot(self: Executor, vm, configured=None):  # type: ignore[no-untyped-def]
        if vm.path == "l":
            raise UtilityError("injected: l's guest said FAILED")
        real_boot(self, vm, configured)

    monkeypatch.setattr(Executor, "boot", failing_boot)
    with pytest.raises(StartFailed) as err:
        cluster.start(ADMIN, str(acme))
    assert "+ l (OpenLDAP vunversioned) on h" in str(err.value)
    assert "injected" in str(err.value) and "rolled back" in str(err.value)
    assert our_domains(cluster) == [] and our_networks(cluster) == []
    assert cluster.store.all_addresses() == []
    status = cluster.status(ADMIN, str(acme))[0]
    assert status["status"] == "failed" and "injected" in status["error"]
    assert (storage(cluster) / "d" / "data-hdb.qcow2").is_file()
    monkeypatch.setattr(Executor, "boot", real_boot)
    assert cluster.start(ADMIN, str(acme))["status"] == "running"  # nothing leaked: starts again


def test_two_concurrent_starts_never_share_vlan_ip_or_mac(
    cluster: ClusterManager, tmp_path: Path
) -> None:
    files = [paper_tree(PAPER, tmp_path / f"vap{i}") for i in range(3)]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = cluster.start(Caller(f"user{i}", "user"), str(files[i]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    vlans = [r["vlans"][""] for r in results.values()]
    assert len(set(vlans)) == 3
    ips = [i["ip"] for r in results.values() for c in r["components"] for i in c["interfaces"]]
    macs = [i["mac"] for r in results.values() for c in r["components"] for i in c["interfaces"]]
    assert len(set(ips)) == len(ips) == 12 and len(set(macs)) == len(macs) == 12
    held = cluster.store.all_addresses()
    assert len(held) == len({a for a, *_ in held}) == 24


def test_starting_a_running_vap_again_is_refused(cluster: ClusterManager, acme: Path) -> None:
    cluster.start(ADMIN, str(acme))
    with pytest.raises(Conflict, match="already running"):
        cluster.start(ADMIN, str(acme))


def test_stopping_a_required_component_warns_and_names_its_dependents(
    cluster: ClusterManager, acme: Path
) -> None:
    cluster.start(ADMIN, str(acme))
    result = cluster.stop(ADMIN, str(acme), "d")
    assert result["stopped"] == ["d"]
    assert result["warnings"] == ["warning: l requires d (DNS), which is being stopped"]
    assert sorted(our_domains(cluster)) == ["col-1-f", "col-1-l"]
    status = {c["path"]: c["state"] for c in cluster.status(ADMIN, str(acme))[0]["components"]}
    assert status == {"f": "running", "l": "running", "d": "stopped"}
    cluster.stop(ADMIN, str(acme))
    assert our_domains(cluster) == [] and cluster.store.all_addresses() == []


def test_host_remove_is_refused_while_it_runs_vms(cluster: ClusterManager, acme: Path) -> None:
    cluster.start(ADMIN, str(acme))
    with pytest.raises(Conflict, match="runs 1 VM"):
        cluster.remove_host(ADMIN, "h1")
    cluster.stop(ADMIN, str(acme))
    cluster.remove_host(ADMIN, "h1")
    assert [h["name"] for h in cluster.hosts(ADMIN)] == ["h2", "h3"]


def test_blacklist_violations_are_listed_not_stopped(cluster: ClusterManager, acme: Path) -> None:
    cluster.start(ADMIN, str(acme))
    cluster.blacklist_add(ADMIN, f"file://{acme.parent / 'DNS'}", "all")
    found = cluster.violations(ADMIN)
    assert [(v["component"], v["version"]) for v in found] == [("d", "unversioned")]
    assert len(our_domains(cluster)) == 3


def test_embedded_default_host_is_used_and_announced(tmp_path: Path) -> None:
    uri = simulated_host_uri(tmp_path, "embedded")
    manager = ClusterManager(tmp_path / "state", default_uri=uri)
    manager.add_vlans(ADMIN, "200-201")
    manager.add_public_ips(ADMIN, "198.51.100.1-198.51.100.2")
    acme = paper_tree(PAPER, tmp_path / "acme")
    result = manager.start(ADMIN, str(acme))
    assert result["notes"] == [f"no host registered: using embedded default host {uri}"]
    assert {c["host"] for c in result["components"]} == {"local"}
    assert manager.hosts(ADMIN)[0]["embedded"] is True
    manager.close()


def test_reconcile_after_restart_marks_crashed_and_reports_unowned(tmp_path: Path) -> None:
    first = make_cluster(tmp_path)
    running = paper_tree(PAPER, tmp_path / "running")
    first.start(ADMIN, str(running), name="running")
    interrupted = paper_tree(PAPER, tmp_path / "interrupted")
    first.start(ADMIN, str(interrupted), name="interrupted")
    vap_id = first.store.vap_by_name("root/interrupted").id  # type: ignore[union-attr]
    first.store.set_vap(vap_id, status="starting")  # as if the daemon died mid-start
    first.close()  # test hosts vanish with their connections, like a SIGKILLed daemon's

    second = ClusterManager(tmp_path / "state")
    h1 = second.host("h1")
    h1.create_domain(
        "<domain type='qemu'><name>stranger</name><memory>1024</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    report = second.reconcile()
    # every domain died with the first daemon: the interrupted start is completed per component
    assert report["recovered"] == ["root/interrupted"] and report["rolled_back"] == []
    assert sorted(report["crashed"]) == [f"root/running:{p}" for p in ("d", "f", "l")]
    assert {"host": "h1", "domain": "stranger"} in report["unowned"]
    assert h1.domain("stranger") is not None  # reported, never killed
    held = {a[2] for a in second.store.all_addresses()}
    assert held == {second.store.vap_by_name(f"root/{n}").id for n in ("running", "interrupted")}  # type: ignore[union-attr]
    status = second.status(ADMIN, "interrupted")[0]
    assert status["status"] == "running"
    assert [c["state"] for c in status["components"]] == ["running"] * 3
    second.close()
