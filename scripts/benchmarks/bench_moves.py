"""Benchmarks of host failure handling and moves (control plane, test-driver hosts).

- failover: a host that runs one VM of the paper's AcmeGroupware stops answering (the hosts
  adapter's fault); watchdog rounds every 0.5 s as the daemon's thread would run them; the time
  from the host's silence until its VM runs on another host, with a grace period of 2 s. The
  baseline is the grace period itself (detection can be no faster); guest boot is excluded
  (test hosts have no guests).
- rebalance plan for 1,000 VMs crowded onto a quarter of 100 hosts (the pure planner).

The live-migration pause of a real VM between lab hosts is printed by
`tests/integration/test_migration_lab.py` (it needs the lab's lock).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bench import Row, median_time

from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.core.moves import Resident, rebalance
from utility.core.placement import HostRoom
from utility.service.manager import Caller, ClusterManager

ADMIN = Caller("bench", "admin")
GRACE = 2.0
ROUND = 0.5
PAPER = Path(__file__).resolve().parents[2] / "examples" / "paper"


def failover_seconds(work: Path) -> float:
    """Seconds from a host's silence until its VM runs elsewhere (see the module docstring)."""
    cut: set[str] = set()
    manager = ClusterManager(work / "state", host_grace=GRACE, host_fault=lambda n: n in cut)
    try:
        for i in (1, 2, 3):
            uri = simulated_host_uri(work, f"h{i}", memory_mib=4096)
            manager.add_host(ADMIN, f"h{i}", uri, 1 << 30, 8)
        manager.add_vlans(ADMIN, "100-103")
        manager.add_public_ips(ADMIN, "192.0.2.10-192.0.2.11")
        cvl = paper_tree(PAPER, work / "acme")
        status = manager.start(ADMIN, str(cvl))
        victim = next(c for c in status["components"] if c["path"] == "d")
        cut.add(victim["host"])
        began = time.monotonic()
        while time.monotonic() - began < 60:
            manager.check()
            now = manager.status(ADMIN, str(cvl))[0]["components"]
            d = next(c for c in now if c["path"] == "d")
            if d["state"] == "running" and d["host"] != victim["host"]:
                return time.monotonic() - began
            time.sleep(ROUND)
        raise RuntimeError("the VM was not restarted elsewhere within 60 s")
    finally:
        manager.close()


def crowded(hosts: int, vms: int) -> tuple[list[Resident], list[HostRoom]]:
    """`vms` VMs of 256-1024 MiB on the first quarter of `hosts` hosts of 64 GiB."""
    residents = []
    used: dict[str, int] = {}
    count: dict[str, int] = {}
    for i in range(vms):
        host = f"h{i % (hosts // 4):04}"
        memory = (256 + 128 * (i % 7)) << 20
        residents.append(Resident(f"v:{i}", host, memory))
        used[host] = used.get(host, 0) + memory
        count[host] = count.get(host, 0) + 1
    rooms = [
        HostRoom(f"h{i:04}", 64 << 30, 64, used.get(f"h{i:04}", 0), count.get(f"h{i:04}", 0))
        for i in range(hosts)
    ]
    return residents, rooms


def rows(only: Callable[[str], bool]) -> Iterable[Row]:
    name = "moves: failover, host silent -> its VM running elsewhere"
    if only(name):
        samples = []
        for _ in range(3):
            with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
                samples.append(failover_seconds(Path(tmp)))
        yield Row(
            name,
            statistics.median(samples),
            "s",
            GRACE,
            "the grace period (lower bound)",
            "goal < 60 s with 30 s grace",
            f"median of {len(samples)}, rounds every {ROUND} s, test hosts (no guest boot)",
        )
    name = "moves: rebalance plan, 1,000 VMs crowded on 25 of 100 hosts"
    if only(name):
        residents, rooms = crowded(100, 1000)
        plan = rebalance(residents, rooms, "spread", limit=10_000)
        ours = median_time(lambda: rebalance(residents, rooms, "spread", limit=10_000), repeat=3)
        yield Row(name, ours, "s", note=f"{len(plan)} moves planned", goal="goal < 2 s")
