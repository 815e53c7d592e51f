"""The multi-host lab (`scripts/lab`) as a pytest fixture, and small helpers to look inside it.

`lab` yields a running lab of `LAB_HOSTS` hosts, holding the machine-wide lab lock for the
test (so xdist workers take turns: `--dist loadgroup` does not keep a group on one worker with
pytest 9 + xdist 3.8 here). The lab is brought up when missing (first use, or a test took it
down) and `scripts/lab down` runs at the end of each worker's session. Helpers run commands
inside a host's namespaces the way an administrator of that host would; the utility itself
reaches hosts only through `host.uri`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB_SCRIPT = ROOT / "scripts" / "lab"
LAB_HOSTS = 2

sys.path.insert(0, str(ROOT / "scripts"))
from multihost_lab import Lab, LabHost, is_running, lab_lock, leftovers  # noqa: E402

__all__ = [
    "Lab",
    "LabHost",
    "LAB_SCRIPT",
    "lab_fixture",
    "lab_session_fixture",
    "lab_cli",
    "leftovers",
    "is_running",
    "lab_lock",
    "in_host",
    "in_netns",
    "links",
    "vxlan_fdb",
    "volumes",
    "three_fixture",
]


def lab_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `scripts/lab ARGS` with the system Python (as an operator would)."""
    env = {**os.environ, "COLLECTIVE_LAB_LOCKED": "1"}  # the calling test holds the lab lock
    return subprocess.run(
        [str(LAB_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def in_host(
    host: LabHost, args: list[str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a command inside the host (its network, mount and UTS namespaces)."""
    return subprocess.run([*host.nsenter(), *args], capture_output=True, text=True, timeout=timeout)


def in_netns(netns: str, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command in a network namespace (mount namespace of the machine)."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, *args], capture_output=True, text=True, timeout=timeout
    )


class _LabSession:
    """Brings the lab up on demand and remembers how long that took."""

    def __init__(self) -> None:
        self.up_seconds: list[float] = []

    def ensure(self, count: int = LAB_HOSTS) -> Lab:
        """A running lab of `count` hosts (brought down and up again when it has another size)."""
        try:
            lab = Lab.load()
            if len(lab.hosts) == count and all(
                Path(f"/proc/{pid}").exists() for h in lab.hosts for pid in h.pids.values()
            ):
                return lab
        except Exception:  # noqa: BLE001 - no state or stale state: make a fresh lab
            pass
        started = time.monotonic()
        lab_cli("down")  # a lab of another size, or a stale one
        proc = lab_cli("up", str(count))
        assert proc.returncode == 0, f"scripts/lab up failed:\n{proc.stderr}"
        self.up_seconds.append(time.monotonic() - started)
        return Lab.load()


@pytest.fixture(scope="session", name="lab_session")
def lab_session_fixture() -> Iterator[_LabSession]:
    if os.geteuid() != 0:
        pytest.skip("the multi-host lab needs root (namespaces, bridges, daemons)")
    session = _LabSession()
    yield session
    with lab_lock():
        proc = lab_cli("down")
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(name="lab")
def lab_fixture(lab_session: _LabSession) -> Iterator[Lab]:
    """A running lab of LAB_HOSTS hosts, this test's alone while it runs."""
    with lab_lock():
        yield lab_session.ensure()


@pytest.fixture(scope="module", name="three")
def three_fixture(lab_session: _LabSession) -> Iterator[Lab]:
    """A lab of three hosts, held (the machine-wide lock) for the whole module."""
    with lab_lock():
        yield lab_session.ensure(3)


def links(host: LabHost) -> dict[str, str]:
    """Link name -> kind (bridge, vxlan, veth, …) inside a lab host's network namespace."""
    done = subprocess.run(
        ["ip", "-n", host.netns, "-d", "-j", "link", "show"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return {
        link["ifname"]: link.get("linkinfo", {}).get("info_kind", "")
        for link in json.loads(done.stdout)
    }


def vxlan_fdb(host: LabHost) -> list[dict[str, object]]:
    """The FDB entries of a host that point at a remote underlay address (VXLAN's)."""
    done = subprocess.run(
        ["bridge", "-n", host.netns, "-j", "fdb", "show"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [e for e in json.loads(done.stdout or "[]") if "dst" in e]


def volumes(host: LabHost) -> list[str]:
    """The volumes in a lab host's `collective` pool (file names)."""
    from utility.adapters.host_storage import POOL_ROOT

    done = in_host(host, ["sh", "-c", f"ls -A {POOL_ROOT}/volumes 2>/dev/null || true"])
    return done.stdout.split()
