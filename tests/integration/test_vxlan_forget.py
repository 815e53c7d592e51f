"""`forget` of the VXLAN port script for real, in a network namespace this test makes: after a
VM moved, what the port (`self`) and its bridge (`master`) learned about the VM's MAC is
deleted, so frames to it flood to every peer; the flood list, other MACs' entries and a
non-VXLAN link of that name are left alone, and a hostile MAC never reaches the shell.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from test_vxlan_ports import LOCAL, flood, ip, ns  # noqa: F401 - the fixture is used by name

from utility.adapters.vxlan_ports import PortSpec, ShellPorts
from utility.errors import UtilityError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

MOVED, STAYED = "52:54:00:aa:00:01", "52:54:00:aa:00:02"


def learned(netns: str, port: str) -> set[tuple[str, str]]:
    """(MAC, where) of the test MACs' entries on the port: `dst` address (the port's own,
    `self`) or `bridge` (the bridge's, `master`)."""
    entries = json.loads(
        subprocess.run(
            ["bridge", "-n", netns, "-j", "fdb", "show", "dev", port],
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # fmt: skip
    )
    return {(e["mac"], str(e.get("dst", "bridge"))) for e in entries if e["mac"] in (MOVED, STAYED)}


def test_forget_drops_what_was_learned_about_a_moved_mac_only(ns: str) -> None:  # noqa: F811
    ports = ShellPorts("t", ["ip", "netns", "exec", ns], remote=False)
    spec = PortSpec("col-vx100", "col-v100", 100, LOCAL, 1450, ("198.51.100.2", "198.51.100.3"))
    ports.ensure(spec)
    for mac, dst in ((MOVED, "198.51.100.2"), (STAYED, "198.51.100.3")):
        subprocess.run(
            ["bridge", "-n", ns, "fdb", "add", mac, "dev", "col-vx100", "dst", dst, "self"],
            check=True,
        )
        subprocess.run(
            ["bridge", "-n", ns, "fdb", "add", mac, "dev", "col-vx100", "master", "static"],
            check=True,
        )
    before = learned(ns, "col-vx100")
    assert {(MOVED, "198.51.100.2"), (STAYED, "198.51.100.3")} <= before
    assert {(MOVED, "bridge"), (STAYED, "bridge")} <= before

    assert ports.forget("col-vx100", [MOVED.upper()]) is True
    after = learned(ns, "col-vx100")
    assert not [e for e in after if e[0] == MOVED]
    assert {(STAYED, "198.51.100.3"), (STAYED, "bridge")} <= after
    assert flood(ns, "col-vx100") == {"198.51.100.2", "198.51.100.3"}

    with pytest.raises(UtilityError, match="not a MAC address"):
        ports.forget("col-vx100", ["52:54:00:aa:00:01; reboot"])
    ip(ns, "link", "add", "col-vx102", "type", "bridge")  # someone else's link of that name
    assert ports.forget("col-vx102", [STAYED]) is False
    assert ports.forget("col-vx103", [STAYED]) is False  # no such port
