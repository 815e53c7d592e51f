"""VAN segments over VXLAN: the pure rules (VNI, peers, MTU, underlay checks), the planner's
flood-list actions as VMs come and go, the port channel's refusals, and the cluster manager on
simulated hosts keeping every host's ports in step."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.unit.test_utility_planner import vm as planner_vm
from utility.adapters import vxlan_ports
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.adapters.store import Store
from utility.adapters.vxlan_ports import PortSpec, ShellPorts, SimulatedPorts
from utility.core import domain_xml, overlay
from utility.core.addresses import subnet_for_vlan
from utility.core.desired_state import Network, VapState, Vm, from_json, to_json
from utility.core.network_xml import NetworkXml
from utility.core.planner import Op, Plan, diff, start_plan, stop_plan
from utility.errors import CheckFailed, Conflict, HostUnreachable, UtilityError
from utility.service.desired import Settings
from utility.service.manager import Caller, ClusterManager

ADMIN = Caller("root", "admin")
MiB = 1 << 20
PAPER = REPO_ROOT / "examples" / "paper"
UNDERLAYS = {"h1": "198.51.100.1", "h2": "198.51.100.2", "h3": "198.51.100.3"}


# --- pure rules -------------------------------------------------------------------------------


def net(host: str, underlay: str | None = "auto", name: str = "col-v100") -> Network:
    address = UNDERLAYS[host] if underlay == "auto" else underlay
    return Network(name, name, host, "", 100, address)


def test_the_vni_is_the_pool_number_and_the_subnet_rule_holds_for_it() -> None:
    n = net("h1")
    assert overlay.stretchable(n) and n.vlan == 100
    assert str(subnet_for_vlan(n.vlan)) == "10.0.100.0/24"  # 10.A.B.0/24 from the VNI's bytes
    assert overlay.port_name("col-v100") == "col-vx100"
    assert overlay.port_name("abcdef-v4094") == "abcdef-vx4094"  # longest: 13 characters
    assert not overlay.stretchable(dataclasses.replace(n, underlay=None))
    assert not overlay.stretchable(Network("col-x1", "col-x1", "h1", "<public>", None, "1.2.3.4"))
    for bad in ("col-x1", "eth0", "-v12", "col-vab"):
        with pytest.raises(UtilityError, match="not a VAN segment bridge"):
            overlay.port_name(bad)


def test_mtu_is_the_underlay_minus_the_vxlan_encapsulation() -> None:
    assert overlay.segment_mtu("198.51.100.1") == 1450 == 1500 - 14 - 20 - 8 - 8
    assert overlay.segment_mtu(None) is None


def test_peers_are_the_other_hosts_carrying_the_same_segment() -> None:
    nets = [net("h1"), net("h2"), net("h3"), net("h1", name="col-v101"), net("h3", None)]
    peers = overlay.peers(nets)
    assert peers[("h1", "col-v100")] == ("198.51.100.2", "198.51.100.3")
    assert peers[("h2", "col-v100")] == ("198.51.100.1", "198.51.100.3")
    assert peers[("h1", "col-v101")] == ()  # alone on its segment: a port, no flood entry
    assert ("h3", "col-v101") not in peers  # no underlay: no port at all
    # sorted numerically, not as text
    wide = [net("h1", "198.51.100.10"), net("h2", "198.51.100.9"), net("h3", "198.51.100.1")]
    assert overlay.peers(wide)[("h3", "col-v100")] == ("198.51.100.9", "198.51.100.10")


def test_a_segment_spanning_a_host_without_underlay_is_reported_as_cut() -> None:
    assert overlay.cut_segments([net("h1"), net("h2")]) == []
    assert overlay.cut_segments([net("h1", None)]) == []  # one host: nothing to join
    (problem,) = overlay.cut_segments([net("h1"), net("h2", None)])
    assert "spans hosts h1, h2" in problem and "h2 has no underlay address" in problem
    assert "--underlay" in problem


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not-an-ip", "is not an IP address"),
        ("198.51.100.1; rm -rf /", "is not an IP address"),
        ("2001:db8::1", "IPv6"),
        ("10.1.2.3", "inside the VAN address base"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.5", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("0.0.0.0", "unspecified"),
        ("169.254.1.1", "link-local"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.7", "in the public IP pool"),
        ("198.51.100.9", "already the underlay of host h9"),
    ],
)
def test_underlay_addresses_that_cannot_work_are_refused(text: str, reason: str) -> None:
    with pytest.raises(UtilityError, match=reason):
        overlay.check_underlay(text, "10.0.0.0/8", {"198.51.100.9": "h9"}, ["192.0.2.7"])


def test_a_good_underlay_is_normalised() -> None:
    assert overlay.check_underlay(" 198.18.13.11 ", "10.0.0.0/8", {}).address == "198.18.13.11"


# --- XML ---------------------------------------------------------------------------------------


def test_network_and_interface_carry_the_segment_mtu() -> None:
    root = ET.fromstring(NetworkXml("col-v100", "col-v100", mtu=1450).to_xml())
    assert root.find("mtu").get("size") == "1450"  # type: ignore[union-attr]
    assert root.find("forward") is None and root.find("ip") is None  # still isolated
    assert ET.fromstring(NetworkXml("n", "b").to_xml()).find("mtu") is None
    with pytest.raises(UtilityError, match="MTU 100"):
        NetworkXml("n", "b", mtu=100)
    nic = domain_xml.InterfaceDevice(mac="02:00:00:00:00:01", network="col-v100", mtu=1450)
    assert nic.element().find("mtu").get("size") == "1450"  # type: ignore[union-attr]
    assert (
        domain_xml.InterfaceDevice(mac="02:00:00:00:00:01", network="n").element().find("mtu")
        is None
    )


def test_stored_states_from_before_vxlan_still_load() -> None:
    old = to_json(state(on("d", "h1")))
    raw = old.replace(', "underlay": "198.51.100.1"', "").replace(', "mtu": 1450', "")
    assert "underlay" not in raw and '"mtu"' not in raw
    loaded = from_json(raw)
    assert loaded.networks[0].underlay is None and loaded.vms[0].interfaces[0].mtu is None


# --- the planner -----------------------------------------------------------------------------


def on(path: str, host: str) -> Vm:
    base = planner_vm(path, host=host)
    iface = dataclasses.replace(base.interfaces[0], mtu=1450)
    return dataclasses.replace(base, interfaces=(iface,))


def state(*vms: Vm) -> VapState:
    hosts = sorted({v.host for v in vms})
    return VapState(
        cvl_path="/a.cvl",
        appliance="A",
        vlans={"": 100},
        vms=vms,
        networks=tuple(net(h) for h in hosts),
    )


def serial(plan: Plan) -> bool:
    seen: set[str] = set()
    for action in plan.actions:
        if not set(action.needs) <= seen:
            return False
        seen.add(action.key)
    return True


def test_start_on_two_hosts_floods_each_to_the_other_before_any_vm_boots() -> None:
    plan = start_plan(state(on("d", "h1"), on("l", "h2")))
    acts = {a.key: a for a in plan.actions}
    assert acts["net:h1/col-v100"].peers == ("198.51.100.2",)
    assert acts["net:h2/col-v100"].peers == ("198.51.100.1",)
    # each VM waits for the segment's networks on every host, not only its own
    assert set(acts["vm:d"].needs) == {"net:h1/col-v100", "net:h2/col-v100"}
    assert "vni 100, peers 198.51.100.2" in acts["net:h1/col-v100"].describe()
    assert plan.to_json()[0]["peers"] == ["198.51.100.2"]
    assert serial(plan)


def test_a_vm_placed_on_a_third_host_relinks_the_others_first() -> None:
    before = state(on("d", "h1"), on("l", "h2"))
    after = state(on("d", "h1"), on("l", "h2"), on("f", "h3"))
    plan = diff(before, after)
    acts = {a.key: a for a in plan.actions}
    assert [a.op for a in plan.actions].count(Op.NETWORK_LINK) == 2
    assert acts["net:h1/col-v100"].op is Op.NETWORK_LINK
    assert acts["net:h1/col-v100"].peers == ("198.51.100.2", "198.51.100.3")
    assert acts["net:h2/col-v100"].peers == ("198.51.100.1", "198.51.100.3")
    assert acts["net:h3/col-v100"].op is Op.NETWORK_UP
    assert acts["net:h3/col-v100"].peers == ("198.51.100.1", "198.51.100.2")
    assert set(acts["vm:f"].needs) == {f"net:h{i}/col-v100" for i in (1, 2, 3)}
    assert acts["net:h1/col-v100"].describe().startswith("~net network col-v100 on h1")
    assert "vm:d" not in acts and "vm:l" not in acts  # running VMs are not touched
    assert serial(plan)


def test_a_vm_leaving_a_host_drops_it_from_the_flood_lists_after_it_stopped() -> None:
    running = state(on("d", "h1"), on("l", "h2"), on("f", "h3"))
    plan = stop_plan(running, "f")
    acts = {a.key: a for a in plan.actions}
    assert acts["net:h3/col-v100"].op is Op.NETWORK_DOWN
    assert acts["net:h3/col-v100"].needs == ("vm:f",)
    for host, peer in (("h1", "198.51.100.2"), ("h2", "198.51.100.1")):
        link = acts[f"net:{host}/col-v100"]
        assert link.op is Op.NETWORK_LINK and link.peers == (peer,)
        assert link.needs == ("vm:f",)  # f still talks while it shuts down
    assert serial(plan)
    # the last VM of a host gone: the remaining host is alone, its port floods nowhere
    alone = stop_plan(state(on("d", "h1"), on("l", "h2")), "l")
    assert {a.key: a for a in alone.actions}["net:h1/col-v100"].peers == ()


def test_a_vm_moving_host_while_another_stops_keeps_a_serial_order() -> None:
    before = state(on("d", "h1"), on("l", "h2"))
    after = state(on("d", "h1"), on("m", "h3"))
    plan = diff(before, after)
    order = [a.key for a in plan.actions]
    assert order.index("vm:l") < order.index("net:h1/col-v100") < order.index("vm:m")
    assert serial(plan)


def test_stopping_everything_removes_ports_with_the_bridges_and_no_relink() -> None:
    plan = stop_plan(state(on("d", "h1"), on("l", "h2")))
    assert {a.op for a in plan.actions} == {Op.STOP, Op.NETWORK_DOWN}
    assert serial(plan)


def test_without_underlays_the_plan_is_what_it_was() -> None:
    plain = VapState(
        "/a.cvl", "A", {"": 100}, (planner_vm("d"),), (Network(*["col-v100"] * 2, "h1", "", 100),)
    )
    plan = start_plan(plain)
    assert [a.op for a in plan.actions] == [Op.NETWORK_UP, Op.START]
    assert plan.actions[0].peers == () and plan.lines()[0] == "+net network col-v100 on h1 vlan 100"


# --- the port channel ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"port": "x; reboot"}, "port name"),
        ({"bridge": "-b"}, "bridge name"),
        ({"bridge": "a-very-long-bridge-name"}, "bridge name"),
        ({"vni": 0}, "VNI 0"),
        ({"vni": 1 << 24}, "VNI"),
        ({"mtu": 70000}, "MTU"),
        ({"local": "$(reboot)"}, "not an IPv4"),
        ({"peers": ("198.51.100.2", "`reboot`")}, "not an IPv4"),
    ],
)
def test_hostile_port_specs_never_reach_a_shell(change: dict[str, object], message: str) -> None:
    good = PortSpec("col-vx100", "col-v100", 100, "198.51.100.1", 1450, ("198.51.100.2",))
    assert good.words()[-1] == "198.51.100.2"
    with pytest.raises(UtilityError, match=message):
        dataclasses.replace(good, **change).words()  # type: ignore[arg-type]


def test_the_channel_follows_the_libvirt_uri() -> None:
    assert isinstance(vxlan_ports.for_uri("h", "test:///default"), SimulatedPorts)
    local = vxlan_ports.for_uri("h", "qemu:///system")
    assert isinstance(local, ShellPorts) and not local.remote
    remote = vxlan_ports.for_uri(
        "h", "qemu+ssh://root@198.18.13.11:2222/system?keyfile=/k/id&no_verify=1"
    )
    assert isinstance(remote, ShellPorts) and remote.remote
    mux = vxlan_ports.control_dir()
    assert mux is not None and mux.stat().st_mode & 0o777 == 0o700
    assert remote.prefix == [
        "ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        "-o", "ControlMaster=auto", "-o", f"ControlPath={mux}/%C",
        "-o", "ControlPersist=60", "-o", "ServerAliveInterval=5", "-p", "2222",
        "-l", "root", "-i", "/k/id", "-o", "StrictHostKeyChecking=no", "--", "198.18.13.11",
    ]  # fmt: skip
    for uri in ("qemu+tls://h/system", "qemu://h/system", "xen:///system"):
        with pytest.raises(UtilityError, match="need a local qemu:/// or a qemu\\+ssh"):
            vxlan_ports.for_uri("h", uri)


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+ssh://-oProxyCommand=reboot/system",
        "qemu+ssh://-lroot@h/system",
        "qemu+ssh://h:port/system",
    ],
)
def test_ssh_uris_that_would_be_read_as_options_are_refused(uri: str) -> None:
    with pytest.raises(UtilityError, match="not allowed|not a number"):
        vxlan_ports.ssh_prefix(uri)


def test_ssh_connections_are_shared_only_through_a_private_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vxlan_ports.tempfile, "gettempdir", lambda: str(tmp_path))
    shared = tmp_path / f"collective-ssh-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # someone made it world-writable: their socket could run our commands
    assert vxlan_ports.control_dir() is None
    assert not any("ControlPath" in a for a in vxlan_ports.ssh_prefix("qemu+ssh://h/system"))
    shared.chmod(0o700)
    assert vxlan_ports.control_dir() == shared


def test_a_remote_shell_quotes_every_word(tmp_path: Path) -> None:
    """The ssh stand-in records the command line the remote login shell would get."""
    fake = tmp_path / "ssh"
    log = tmp_path / "args"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\ncat > /dev/null\necho removed\n')
    fake.chmod(0o755)
    ports = ShellPorts("h", [str(fake), "--", "host"], remote=True)
    assert ports.remove("col-vx100") is True
    assert log.read_text().splitlines()[-1] == "sh -s -- remove col-vx100"


def test_simulated_ports_reconcile_like_the_script() -> None:
    bridges = ["col-v100"]
    ports = SimulatedPorts("h1", lambda: bridges)
    spec = PortSpec("col-vx100", "col-v100", 100, "198.51.100.1", 1450, ("198.51.100.3",))
    assert ports.ensure(spec) == ("198.51.100.3",)
    assert ports.ensure(dataclasses.replace(spec, peers=("198.51.100.2",))) == ("198.51.100.2",)
    with pytest.raises(UtilityError, match="no bridge"):
        ports.ensure(dataclasses.replace(spec, bridge="col-v101"))
    assert ports.remove("col-vx100") and not ports.remove("col-vx100")


# --- the cluster manager on simulated hosts ------------------------------------------------------


def cluster(tmp: Path, underlays: dict[str, str | None], memory_mib: int = 100) -> ClusterManager:
    manager = ClusterManager(tmp / "state", Settings(placement="spread"))
    for name, underlay in underlays.items():
        uri = simulated_host_uri(tmp, f"{name}-{tmp.name}")
        manager.add_host(ADMIN, name, uri, memory_mib * MiB, 2, underlay)
    manager.add_vlans(ADMIN, "100-163")
    manager.add_public_ips(ADMIN, "192.0.2.10-192.0.2.20")
    return manager


def ports_of(manager: ClusterManager) -> dict[str, dict[str, tuple[str, ...]]]:
    """host -> port -> flood list, as each simulated host holds them."""
    found = {}
    for row in manager.store.hosts():
        ports = manager.host(row.name).ports
        assert isinstance(ports, SimulatedPorts)
        found[row.name] = {
            name: tuple(sorted(p.flood, key=ipaddress.IPv4Address))
            for name, p in ports.ports.items()
        }
    return found


def test_a_van_spread_over_three_hosts_gets_a_port_per_host_in_step_as_vms_go(
    tmp_path: Path,
) -> None:
    manager = cluster(tmp_path, dict(UNDERLAYS))
    acme = paper_tree(PAPER, tmp_path / "acme", memory_mib=64)
    result = manager.start(ADMIN, str(acme))
    hosts = {c["path"]: c["host"] for c in result["components"]}
    assert sorted(hosts.values()) == ["h1", "h2", "h3"]
    vni = result["vlans"][""]
    port = f"col-vx{vni}"
    everyone = set(UNDERLAYS.values())
    for host, ports in ports_of(manager).items():
        assert set(ports[port]) == everyone - {UNDERLAYS[host]}
        sim = manager.host(host).ports
        assert isinstance(sim, SimulatedPorts)
        assert (sim.ports[port].vni, sim.ports[port].mtu) == (vni, 1450)
    # guests are told the segment MTU through their NIC
    f_host = manager.host(hosts["f"])
    (domain,) = [d for d in f_host.domains() if d.name == "col-1-f"]
    sizes = {
        i.find("source").get("network"): i.find("mtu")
        for i in ET.fromstring(domain.xml).findall("devices/interface")
    }  # type: ignore[union-attr]
    assert sizes[f"col-v{vni}"].get("size") == "1450"  # type: ignore[union-attr]
    assert sizes["col-x1"] is None  # the public side is not stretched

    # stop one component: its host leaves the others' flood lists, its port goes
    manager.stop(ADMIN, str(acme), "l")
    gone = UNDERLAYS[hosts["l"]]
    after = ports_of(manager)
    assert port not in after[hosts["l"]]
    for host in (hosts["d"], hosts["f"]):
        assert gone not in after[host][port] and len(after[host][port]) == 1

    manager.stop(ADMIN, str(acme))
    assert ports_of(manager) == {h: {} for h in UNDERLAYS}
    manager.close()


def test_a_van_cut_between_real_hosts_is_refused_and_simulated_ones_are_not() -> None:
    from utility.adapters.store import HostRow
    from utility.service.pipeline import check_segments

    spread = state(on("d", "h1"), on("l", "h2"))
    cut = dataclasses.replace(spread, networks=(net("h1"), net("h2", None)))
    real = [HostRow("h1", "qemu+ssh://a/system", 1, 1), HostRow("h2", "qemu+ssh://b/system", 1, 1)]
    check_segments(spread, real)
    with pytest.raises(CheckFailed, match="h2 has no underlay address"):
        check_segments(cut, real)
    simulated = [dataclasses.replace(h, uri="test:///default") for h in real]
    check_segments(cut, simulated)  # a test: host forwards nothing: joined only on paper


def test_host_add_with_an_underlay_is_checked_stored_listed_and_unique(tmp_path: Path) -> None:
    manager = cluster(tmp_path, {"h1": "198.51.100.1"})
    assert manager.store.hosts()[0].underlay == "198.51.100.1"
    assert manager.hosts(ADMIN)[0]["underlay"] == "198.51.100.1"
    uri = simulated_host_uri(tmp_path, "h2-dup")
    before = manager.store.hosts()
    with pytest.raises(UtilityError, match="already the underlay of host h1"):
        manager.add_host(ADMIN, "h2", uri, 100 * MiB, 2, "198.51.100.1")
    with pytest.raises(UtilityError, match="inside the VAN address base"):
        manager.add_host(ADMIN, "h2", uri, 100 * MiB, 2, "10.0.100.1")
    assert manager.store.hosts() == before
    # the store refuses a duplicate too (two racing adds)
    with pytest.raises(Conflict, match="already has underlay"):
        manager.store.add_host(dataclasses.replace(before[0], name="h3", uri="test:///x"))
    manager.close()


def test_a_host_that_does_not_hold_its_underlay_is_not_registered(tmp_path: Path) -> None:
    """The probe runs for real on this machine (qemu:///system is local): 198.51.100.77 is not
    one of its addresses, so nothing is made and nothing stored."""
    manager = ClusterManager(tmp_path / "state", default_uri="test:///default")
    if not manager.hosts_service.pool.get("probe", "qemu:///system").usable_for_qemu():
        pytest.skip("no local libvirtd")
    before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    with pytest.raises(UtilityError, match="198.51.100.77 is not an address of this host"):
        manager.add_host(ADMIN, "h1", "qemu:///system", MiB, 1, "198.51.100.77")
    assert manager.store.hosts() == []
    assert subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout == before
    manager.close()


def test_a_cut_off_host_has_no_port_channel(tmp_path: Path) -> None:
    from utility.adapters.libvirt_host import LibvirtHost

    host = LibvirtHost("h1", "test:///default", fault=lambda _n: True)
    with pytest.raises(HostUnreachable, match="cut off"):
        host.ports.remove("col-vx100")


def test_an_old_hosts_table_gains_the_underlay_column_with_rows_kept(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    db = sqlite3.connect(state_dir / "utility.sqlite3")
    db.execute(
        "CREATE TABLE hosts (name TEXT PRIMARY KEY, uri TEXT NOT NULL, memory INTEGER NOT NULL,"
        " max_vms INTEGER NOT NULL, embedded INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("INSERT INTO hosts VALUES ('old', 'test:///default', 1024, 2, 0)")
    db.commit()
    db.close()
    store = Store(state_dir)
    (row,) = store.hosts()
    assert (row.name, row.underlay) == ("old", None)
    store.add_host(dataclasses.replace(row, name="new", uri="test:///y", underlay="198.51.100.4"))
    with pytest.raises(Conflict):
        store.add_host(
            dataclasses.replace(row, name="dup", uri="test:///z", underlay="198.51.100.4")
        )
    with pytest.raises(sqlite3.IntegrityError):  # the unique index stands behind the check
        with store.transaction() as tx:
            tx.execute("UPDATE hosts SET underlay='198.51.100.4' WHERE name='old'")


def test_the_api_takes_an_underlay_refuses_hostile_ones_and_changes_nothing(
    tmp_path: Path,
) -> None:
    from utility.web.api import create_app

    manager = ClusterManager(tmp_path / "state")
    client = create_app(manager, require_token=False).test_client()
    uri = simulated_host_uri(tmp_path, "h1")
    body = {"name": "h1", "uri": uri, "memory": "1G", "max_vms": 2}
    for hostile in ("198.51.100.1 -oProxyCommand=x", "$(reboot)", "127.0.0.1", 7, "x" * 100):
        answer = client.post("/v1/hosts", json={**body, "underlay": hostile})
        assert answer.status_code == 400, hostile
        assert "underlay" in answer.get_json()["error"], hostile
        assert client.get("/v1/hosts").get_json() == []
    answer = client.post("/v1/hosts", json={**body, "underlay": "198.51.100.1"})
    assert answer.status_code == 201 and answer.get_json()["underlay"] == "198.51.100.1"
    (listed,) = client.get("/v1/hosts").get_json()
    assert listed["underlay"] == "198.51.100.1"
    plain = client.post(
        "/v1/hosts", json={**body, "name": "h2", "uri": simulated_host_uri(tmp_path, "h2")}
    )
    assert plain.status_code == 201 and plain.get_json()["underlay"] is None
    page = client.get("/ui/").get_data(as_text=True)
    assert page.count("underlay <code>") == 1 and "underlay <code>198.51.100.1</code>" in page
    manager.close()


def test_rollback_cleanup_removes_the_port_with_the_network_on_every_host(
    tmp_path: Path,
) -> None:
    """`remove_network_everywhere` (the rollback's sweep by name) takes the VXLAN port too."""
    manager = cluster(tmp_path, {"h1": "198.51.100.1", "h2": None})
    for name in ("h1", "h2"):
        host = manager.host(name)
        host.ensure_network("col-v100", NetworkXml("col-v100", "col-v100").to_xml())
    spec = PortSpec("col-vx100", "col-v100", 100, "198.51.100.1", 1450, ("198.51.100.2",))
    manager.host("h1").ports.ensure(spec)
    assert manager.hosts_service.remove_network_everywhere("col-v100") == []
    assert ports_of(manager) == {"h1": {}, "h2": {}}
    assert all("col-v100" not in manager.host(n).networks() for n in ("h1", "h2"))
    # a public network's name has no port to remove
    assert manager.hosts_service.remove_network_everywhere("col-x1") == []
    manager.close()
