"""The VXLAN port script for real, in a network namespace this test makes (no lab needed).

`ShellPorts` runs the same script it sends over ssh, here through `ip netns exec NS`: the port
appears on the bridge with the VNI, local address and MTU asked for, its flood list becomes
exactly the peers given (stale entries go, a port with the wrong VNI is replaced), `remove`
deletes it with every entry and leaves a non-VXLAN link of that name alone, and `probe` refuses
an address the host does not hold. Nothing leaves the namespace; it is deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import UtilityDaemon, run_cui
from utility.adapters.simulation import simulated_host_uri
from utility.adapters.vxlan_ports import PortSpec, ShellPorts
from utility.errors import UtilityError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

LOCAL = "198.51.100.1"


def ip(ns: str, *args: str) -> str:
    proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"cvxt-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "add", "under0", "type", "bridge")  # stands in for the underlay NIC
        ip(name, "addr", "add", f"{LOCAL}/24", "dev", "under0")
        ip(name, "link", "set", "under0", "up")
        ip(name, "link", "add", "col-v100", "type", "bridge")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def flood(ns: str, port: str) -> set[str]:
    entries = json.loads(
        subprocess.run(
            ["bridge", "-n", ns, "-j", "fdb", "show", "dev", port],
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # fmt: skip
    )
    return {e["dst"] for e in entries if e["mac"] == "00:00:00:00:00:00"}


def link(ns: str, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads(ip(ns, "-d", "-j", "link", "show", "dev", name))[0]


def test_ensure_reconciles_the_port_and_its_flood_list(ns: str) -> None:
    ports = ShellPorts("t", ["ip", "netns", "exec", ns], remote=False)
    spec = PortSpec("col-vx100", "col-v100", 100, LOCAL, 1450, ("198.51.100.2", "198.51.100.3"))
    assert ports.ensure(spec) == ("198.51.100.2", "198.51.100.3")
    port = link(ns, "col-vx100")
    assert port["linkinfo"]["info_kind"] == "vxlan"
    assert port["linkinfo"]["info_data"]["id"] == 100
    assert port["linkinfo"]["info_data"]["local"] == LOCAL
    assert port["linkinfo"]["info_data"]["port"] == 4789
    assert port["mtu"] == 1450 and port["master"] == "col-v100" and "UP" in port["flags"]
    assert flood(ns, "col-vx100") == {"198.51.100.2", "198.51.100.3"}

    # a VM left host .3 and one came to .4: exactly the new list, the same port
    index = port["ifindex"]
    moved = PortSpec("col-vx100", "col-v100", 100, LOCAL, 1450, ("198.51.100.2", "198.51.100.4"))
    assert ports.ensure(moved) == ("198.51.100.2", "198.51.100.4")
    assert flood(ns, "col-vx100") == {"198.51.100.2", "198.51.100.4"}
    assert link(ns, "col-vx100")["ifindex"] == index
    assert ports.ensure(moved) == ("198.51.100.2", "198.51.100.4")  # idempotent

    # a stale port with another VNI (a crashed earlier run) is replaced, not trusted
    ip(ns, "link", "del", "col-vx100")
    ip(ns, "link", "add", "col-vx100", "type", "vxlan", "id", "999", "dstport", "4789")
    assert ports.ensure(spec) == ("198.51.100.2", "198.51.100.3")
    assert link(ns, "col-vx100")["linkinfo"]["info_data"]["id"] == 100

    assert ports.remove("col-vx100") is True
    assert "col-vx100" not in ip(ns, "-o", "link")
    assert ports.remove("col-vx100") is False


def learned(ns: str, port: str) -> set[tuple[str, str]]:
    """(MAC, dst) the VXLAN port knows besides its flood list."""
    done = subprocess.run(
        ["bridge", "-n", ns, "-j", "fdb", "show", "dev", port],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {
        (e["mac"], e["dst"])
        for e in json.loads(done.stdout)
        if "dst" in e and e["mac"] != "00:00:00:00:00:00"
    }


def test_a_dropped_peer_takes_the_macs_learned_behind_it_along(ns: str) -> None:
    """A VM that ran behind a failed host runs elsewhere now: the MAC learned behind the old
    peer must not swallow unicast for 300 s; MACs behind peers that stay are kept when no peer
    is dropped."""
    ports = ShellPorts("t", ["ip", "netns", "exec", ns], remote=False)
    both = PortSpec("col-vx100", "col-v100", 100, LOCAL, 1450, ("198.51.100.2", "198.51.100.3"))
    ports.ensure(both)
    for mac, dst in (("52:54:00:00:00:02", "198.51.100.2"), ("52:54:00:00:00:03", "198.51.100.3")):
        subprocess.run(
            ["bridge", "-n", ns, "fdb", "add", mac, "dev", "col-vx100", "dst", dst, "dynamic"],
            check=True,
        )  # as the kernel learns them from VXLAN packets
    ports.ensure(both)  # nothing dropped: nothing forgotten
    assert learned(ns, "col-vx100") == {
        ("52:54:00:00:00:02", "198.51.100.2"),
        ("52:54:00:00:00:03", "198.51.100.3"),
    }
    assert ports.ensure(dataclasses.replace(both, peers=("198.51.100.2",))) == ("198.51.100.2",)
    assert learned(ns, "col-vx100") == set()  # relearned from the next packets
    assert flood(ns, "col-vx100") == {"198.51.100.2"}


def test_the_script_refuses_what_it_must_not_touch(ns: str) -> None:
    ports = ShellPorts("t", ["ip", "netns", "exec", ns], remote=False)
    with pytest.raises(UtilityError, match="no bridge col-v101 on this host"):
        ports.ensure(PortSpec("col-vx101", "col-v101", 101, LOCAL, 1450))
    ip(ns, "link", "add", "col-vx102", "type", "bridge")  # someone else's link of that name
    with pytest.raises(UtilityError, match="is not a VXLAN port"):
        ports.remove("col-vx102")
    with pytest.raises(UtilityError, match="is not a VXLAN port"):
        ports.ensure(PortSpec("col-vx102", "col-v100", 102, LOCAL, 1450))
    assert link(ns, "col-vx102")["linkinfo"]["info_kind"] == "bridge"  # untouched
    assert "col-vx101" not in ip(ns, "-o", "link")


def test_probe_accepts_a_held_address_and_refuses_another(ns: str) -> None:
    ports = ShellPorts("t", ["ip", "netns", "exec", ns], remote=False)
    before = ip(ns, "-o", "link")
    ports.probe(LOCAL)
    with pytest.raises(UtilityError, match="198.51.100.9 is not an address of this host"):
        ports.probe("198.51.100.9")
    assert ip(ns, "-o", "link") == before  # the probe port is gone again


def test_cui_host_add_underlay_through_the_daemon(tmp_path: Path) -> None:
    """The command line end to end: stored, shown in `host list` (table and JSON); a refused
    address exits non-zero with the rule it broke and registers nothing."""
    uri = simulated_host_uri(tmp_path, "h1")
    with UtilityDaemon(tmp_path / "state") as daemon:
        refused = run_cui(
            "host", "add", "h0", "--uri", uri, "--memory", "1G", "--max-vms", "2",
            "--underlay", "10.0.0.9", env=daemon.env,
        )  # fmt: skip
        assert refused.returncode != 0
        assert "10.0.0.9 is inside the VAN address base" in refused.stderr
        assert json.loads(daemon.cui("host", "list", "--json")) == []
        added = daemon.cui(
            "host", "add", "h1", "--uri", uri, "--memory", "1G", "--max-vms", "2",
            "--underlay", "198.51.100.1",
        )  # fmt: skip
        assert added.strip() == f"added host h1 ({uri}, underlay 198.51.100.1)"
        (row,) = json.loads(daemon.cui("host", "list", "--json"))
        assert row["underlay"] == "198.51.100.1"
        table = daemon.cui("host", "list").splitlines()
        assert "UNDERLAY" in table[0] and "198.51.100.1" in table[1]
