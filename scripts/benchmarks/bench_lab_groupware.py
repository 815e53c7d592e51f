"""The Groupware VAN on the multi-host lab (`scripts/lab`, as root): `cui start` to every
appliance READY with the VAN split over 3 lab hosts (placement spread, VXLAN) beside the same
start with all six VMs on 1 lab host, same run.

Each start is cold for the hosts: the lab is made afresh for it (`scripts/lab up N`), so every
host's pool is empty and the program disks travel into it over libvirt (qemu+ssh), three pools'
worth for 3 hosts, one for 1 host; the utility's own disk cache is cold too (a fresh daemon).
The harness is scripts/groupware_network.py (gunicorn, git push + signed tags, `cui utility
serve`, `cui start`). Real VMs under TCG on a 2-core machine shared with other work: one run of
each by default (COLLECTIVE_BENCH_LAB_RUNS=N for the median of N). The lab is machine-wide: this
holds its lock throughout and always brings it down.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench import Row

SCRIPTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS))
import multihost_lab  # noqa: E402
from groupware_network import lab  # noqa: E402

NAME = "Groupware on the lab: cui start -> all 6 READY, 3 lab hosts (spread, VXLAN) vs 1 lab host"
RUNS = int(os.environ.get("COLLECTIVE_BENCH_LAB_RUNS", "1"))


def rows(only: Callable[[str], bool]) -> Iterable[Row]:
    if not only(NAME):
        return []
    if os.geteuid() != 0:
        raise RuntimeError("the multi-host lab needs root")
    times: dict[int, list[float]] = {3: [], 1: []}
    with multihost_lab.lab_lock():
        for _ in range(RUNS):
            for count in (3, 1):
                made = multihost_lab.up(count)
                try:
                    times[count].append(_ready(made.hosts))
                    print(f"{count} lab host(s): {times[count][-1]:.1f} s", file=sys.stderr)
                finally:
                    multihost_lab.down()
    return [
        Row(
            NAME,
            statistics.median(times[3]),
            "s",
            statistics.median(times[1]),
            "1 lab host (same run)",
            note=(
                f"median of {RUNS} run(s) each (3 hosts {_fmt(times[3])}, 1 host "
                f"{_fmt(times[1])}); cold hosts (fresh lab per start); TCG, 2 shared cores"
            ),
        )
    ]


def _fmt(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values) + " s"


def _ready(hosts: list[Any]) -> float:
    """Seconds of `cui start` AcmeGroupware to every appliance READY on `hosts`."""
    with lab(lab_hosts=hosts) as g:
        g.ready_timeout = 300.0
        g.build()
        g.serve()
        g.publish_all()
        g.start_utility()
        g.write_user_files()
        seconds = g.start()
        placed = set(g.hosts_of().values())
        if placed != {h.name for h in hosts}:
            raise RuntimeError(f"spread placed the VMs on {sorted(placed)} only")
        return seconds


if __name__ == "__main__":  # pragma: no cover
    for row in rows(lambda _: True):
        print(row)
