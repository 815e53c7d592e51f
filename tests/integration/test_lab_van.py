"""A VAN segment the utility stretches over two lab hosts with VXLAN, real VMs on it.

The bridges, VXLAN ports and flood lists are made and removed by the utility's own planner and
executor (network actions of `diff(current, desired)`) over the hosts' `qemu+ssh://` URIs: the
port script travels over ssh with the lab's key, nothing is installed on the hosts. The VMs
(the Web appliance, TCG) are booted as in test_lab.py, one per host, their NIC the one the
utility generates. Checked in each host's own network namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_fixture import (  # the fixtures are used by name
    Lab,
    in_host,
    lab_fixture,  # noqa: F401
    lab_session_fixture,  # noqa: F401
)

pytest.importorskip("libvirt")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import lab_van  # noqa: E402

from utility.core.addresses import subnet_for_vlan  # noqa: E402
from utility.core.planner import Op  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.vm, pytest.mark.xdist_group("lab")]

ROOT = Path(__file__).resolve().parents[2]
VNI = 3001
MTU = 1450


@pytest.fixture(scope="module")
def web_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("van-images")
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-appliances"), str(out), "--json", "--only", "Web"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return Path(json.loads(proc.stdout.splitlines()[0])["dir"])


@pytest.fixture
def networks(lab: Lab) -> Iterator[lab_van.UtilityNetworks]:
    nets = lab_van.UtilityNetworks(lab)
    yield nets
    nets.close()


def gone(view: lab_van.HostView) -> bool:
    return view == lab_van.HostView(None, None, frozenset(), ())


def test_a_two_host_van_made_by_the_utility_carries_vms_and_leaves_nothing_behind(
    lab: Lab, networks: lab_van.UtilityNetworks, web_image: Path
) -> None:
    one, two = lab.hosts
    both = lab_van.segment_state(lab, VNI, {"a": one.name, "b": two.name})
    only_a = lab_van.segment_state(lab, VNI, {"a": one.name})
    port = f"col-vx{VNI}"
    subnet = subnet_for_vlan(VNI)  # 10.11.185.0/24: the 10.A.B.0/24 rule on the VNI
    pools = [lab_van.open_pool(h) for h in (one, two)]
    vms: list[lab_van.SegmentVM] = []
    probe = None
    try:
        plan, outcome = networks.apply(None, both)
        assert outcome.ok, outcome.error
        assert f"+net network col-v{VNI} on lab1 vni {VNI}, peers {two.ip}" in plan.lines()
        for host, other in ((one, two), (two, one)):
            view = lab_van.host_view(host, VNI)
            assert view.bridge_mtu == MTU
            assert view.port == {
                "vni": VNI, "local": host.ip, "dstport": 4789, "mtu": MTU,
                "master": f"col-v{VNI}", "up": True,
            }  # fmt: skip
            assert view.flood == {other.ip}

        for (conn, pool), name, host in zip(pools, ("a", "b"), (one, two), strict=True):
            base = lab_van.upload_base(conn, pool, web_image)
            vm = both.vm(name)
            assert vm is not None
            vms.append(lab_van.boot(host, conn, pool, base, web_image, vm))
        a, b = vms
        # the guest is told the segment MTU: libvirt gives the virtio NIC host_mtu=1450
        (pid,) = in_host(two, ["pgrep", "-f", f"guest={b.vm.domain},"]).stdout.split()
        qemu = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert f'"host_mtu":{MTU}' in qemu or f"host_mtu={MTU}" in qemu, qemu

        probe = lab_van.Probe(one, VNI, str(subnet.network_address + 2))
        tx_before = port_tx(one, port)
        same = probe.ping(a.ip, "-c", "10", "-i", "0.05")
        cross = probe.ping(b.ip, "-c", "10", "-i", "0.05")
        assert same.returncode == 0, same.stdout + a.console()[-2000:]
        assert cross.returncode == 0, cross.stdout + b.console()[-2000:]
        assert port_tx(one, port) >= tx_before + 10  # the cross-host pings went through VXLAN
        page = probe.run("curl", "-sS", "--max-time", "10", f"http://{b.ip}/")
        assert "served from lab2" in page.stdout, page.stderr
        full = probe.ping(b.ip, "-c", "2", "-M", "do", "-s", str(MTU - 28))
        assert full.returncode == 0, full.stdout  # a full 1450-byte frame crosses, DF set

        # b leaves host two: host one's flood list follows, host two keeps nothing
        b.destroy()
        plan, outcome = networks.apply(both, only_a)
        assert outcome.ok, outcome.error
        assert {(x.op, x.key) for x in plan.actions} == {
            (Op.NETWORK_LINK, f"net:lab1/col-v{VNI}"),
            (Op.NETWORK_DOWN, f"net:lab2/col-v{VNI}"),
        }
        assert gone(lab_van.host_view(two, VNI))
        assert lab_van.host_view(one, VNI).flood == frozenset()
        assert probe.ping(a.ip, "-c", "2").returncode == 0  # a is still reachable at home

        # a VM of the segment placed on host two again: host one floods to it again
        plan, outcome = networks.apply(only_a, both)
        assert outcome.ok, outcome.error
        assert lab_van.host_view(one, VNI).flood == {two.ip}
        assert lab_van.host_view(two, VNI).flood == {one.ip}

        # stop the VAN: no bridge, VXLAN port or FDB entry on any host
        a.destroy()
        probe.remove()
        probe = None
        plan, outcome = networks.apply(both, None)
        assert outcome.ok, outcome.error
        for host in (one, two):
            assert gone(lab_van.host_view(host, VNI)), host.name
            assert lab_van.all_fdb_entries_of(host, port) == []
            assert f"col-v{VNI}" not in networks.hosts[host.name].networks()
    finally:
        if probe is not None:
            probe.remove()
        for vm in vms:
            vm.destroy()
        networks.apply(both, None)
        for conn, pool in pools:
            lab_van.close_pool(conn, pool)


def port_tx(host: lab_van.LabHost, port: str) -> int:
    stats = json.loads(
        subprocess.run(
            ["ip", "-n", host.netns, "-s", "-j", "link", "show", port],
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # fmt: skip
    )[0]
    return int(stats["stats64"]["tx"]["packets"])


def test_host_add_checks_the_underlay_on_the_host_over_ssh(lab: Lab, tmp_path: Path) -> None:
    """`cui host add --underlay` runs the probe on the lab host itself, over its qemu+ssh URI:
    an address the host holds is accepted, one it does not is refused and nothing is stored."""
    from utility.errors import UtilityError
    from utility.service.manager import Caller, ClusterManager

    admin = Caller("root", "admin")
    one, two = lab.hosts
    manager = ClusterManager(tmp_path / "state", default_uri="test:///default")
    try:
        with pytest.raises(UtilityError, match=f"{two.ip} is not an address of this host"):
            manager.add_host(admin, one.name, one.uri, 1 << 30, 4, two.ip)
        assert manager.store.hosts() == []
        before = in_host(one, ["ip", "-o", "link"]).stdout
        manager.add_host(admin, one.name, one.uri, 1 << 30, 4, one.ip)
        manager.add_host(admin, two.name, two.uri, 1 << 30, 4, two.ip)
        assert [(h.name, h.underlay) for h in manager.store.hosts()] == [
            (one.name, one.ip),
            (two.name, two.ip),
        ]
        assert in_host(one, ["ip", "-o", "link"]).stdout == before  # the probe port went again
    finally:
        manager.close()
