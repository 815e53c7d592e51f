"""A lab host under the Groupware VAN dies: seconds from its death to every VM READY again on the
other hosts, against the failure grace period alone (the part of it that is waiting on purpose).

The Groupware of bench_lab_groupware.py runs spread over 3 lab hosts (scripts/groupware_network.py:
gunicorn, git push + signed tags, `cui utility serve`, `cui start`) with the defaults that matter
here: `--host-grace 30`, `--check-interval 10`. Then the host running DNS dies
(`multihost_lab.kill_host`: its qemu processes SIGKILLed, then its libvirtd) and the clock runs
until `cui status` shows every component `running` (READY) on the two other hosts (after a first
backup of DNS's data disk, `--backup-interval 20`, so that it comes back from it): detection
(the grace period plus up to one check interval), placement, data disks from their latest backup
into the new hosts' pools, and the boots in dependency order under TCG. One run by default: the
set-up is several minutes (COLLECTIVE_BENCH_LAB_RUNS=N for the median of N). The lab is
machine-wide: this holds its lock throughout and brings it down.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench import Row

SCRIPTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS))
import multihost_lab  # noqa: E402
from groupware_network import started_on_lab  # noqa: E402

NAME = "Groupware on the lab: a host dies -> its VMs READY on the other hosts (grace 30 s)"
RUNS = int(os.environ.get("COLLECTIVE_BENCH_LAB_RUNS", "1"))
GRACE = 30.0
CHECK = 10.0


def rows(only: Callable[[str], bool]) -> Iterable[Row]:
    if not only(NAME):
        return []
    if os.geteuid() != 0:
        raise RuntimeError("the multi-host lab needs root")
    times: list[float] = []
    moved: list[int] = []
    with multihost_lab.lab_lock():
        for _ in range(RUNS):
            made = multihost_lab.up(3)
            try:
                seconds, count = failover(made.hosts)
                times.append(seconds)
                moved.append(count)
                print(f"{count} VMs READY elsewhere {seconds:.1f} s after", file=sys.stderr)
            finally:
                multihost_lab.down()
    return [
        Row(
            NAME,
            statistics.median(times),
            "s",
            GRACE,
            "the grace period alone",
            goal="< 60 s",
            note=(
                f"median of {RUNS} run(s) ({'/'.join(f'{t:.0f}' for t in times)} s); "
                f"{'/'.join(map(str, moved))} VMs moved (DNS and the other VM on its host); "
                f"--host-grace {GRACE:.0f}, --check-interval {CHECK:.0f}; DNS's data disk from "
                "its backup; host killed by "
                "SIGKILL of its qemu processes and libvirtd; TCG, 2 shared cores"
            ),
        )
    ]


def failover(hosts: list[Any]) -> tuple[float, int]:
    """Seconds from the death of DNS's host to every component running elsewhere; VMs moved."""
    serve = ("--host-grace", str(GRACE), "--check-interval", str(CHECK), "--backup-interval", "20")
    with started_on_lab(hosts, serve_args=serve, plug=False) as g:
        began = time.monotonic()
        while not g.status()["d"].get("backups"):  # DNS's data disk comes back from a backup
            if time.monotonic() - began > 300:
                raise RuntimeError("no backup of DNS's data disk within 300 s")
            time.sleep(1)
        placed = g.hosts_of()
        victim = g.lab_host(placed["d"])
        died = time.monotonic()
        multihost_lab.kill_host(victim)
        try:
            while True:
                rows = g.status().values()
                if all(r["state"] == "running" and r["host"] != victim.name for r in rows):
                    return time.monotonic() - died, sum(h == victim.name for h in placed.values())
                if time.monotonic() - died > 900:
                    raise RuntimeError(f"not whole 900 s after {victim.name} died: {list(rows)}")
                time.sleep(0.5)
        finally:
            multihost_lab.revive_libvirtd(victim)  # so that the stop at the end can finish


if __name__ == "__main__":  # pragma: no cover
    for row in rows(lambda _: True):
        print(row)
