"""VAN segments over VXLAN on the multi-host lab (`scripts/lab up 2`, as root).

* Round trip across hosts vs on one host: a segment the utility stretches over two lab hosts
  (its planner and executor, ports set over qemu+ssh), a Web appliance VM (TCG) on each host,
  and a probe namespace on host one's segment bridge. Ours: probe -> the VM on host two (bridge,
  VXLAN port, underlay, VXLAN port, bridge, tap). Baseline, same run: probe -> the VM on host
  one (bridge and tap only). Median of every reply over 5 alternating rounds of 20 pings.
* Segment set-up: the utility bringing the segment up on both hosts (libvirt networks plus the
  VXLAN port script over ssh) beside the same segment on hosts without an underlay (libvirt
  networks only), median of 5; what the ssh channel costs a start.

The lab is machine-wide: this holds its lock, brings it up, and brings it down again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bench import Row

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import lab_van  # noqa: E402
import multihost_lab  # noqa: E402
from lab_van import UtilityNetworks  # noqa: E402
from multihost_lab import Lab, LabHost  # noqa: E402

from utility.core.addresses import subnet_for_vlan  # noqa: E402
from utility.core.desired_state import VapState  # noqa: E402

VNI = 3002
ROUNDS = 5


def _names() -> dict[str, str]:
    return {
        "rtt": "VAN round trip: VM on another lab host (VXLAN) vs same host",
        "up": "VAN segment up on 2 lab hosts: with VXLAN ports vs bridges only",
    }


def _lab(args: list[str]) -> None:
    env = {**os.environ, "COLLECTIVE_LAB_LOCKED": "1"}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "lab"), *args], capture_output=True, text=True, env=env, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/lab {' '.join(args)}: {proc.stderr.strip()}")


def rows(only: Callable[[str], bool]) -> Iterable[Row]:
    names = _names()
    if not any(only(n) for n in names.values()):
        return []
    if os.geteuid() != 0:
        raise RuntimeError("the multi-host lab needs root")
    with multihost_lab.lab_lock():
        _lab(["up", "2"])
        try:
            return list(_measure(multihost_lab.Lab.load(), only, names))
        finally:
            _lab(["down"])


def _measure(lab: Lab, only: Callable[[str], bool], names: dict[str, str]) -> Iterable[Row]:
    nets = UtilityNetworks(lab)
    one, two = lab.hosts
    both = lab_van.segment_state(lab, VNI, {"a": one.name, "b": two.name})
    try:
        if only(names["up"]):
            yield _setup_row(nets, both, names["up"])
        if only(names["rtt"]):
            yield _rtt_row(nets, both, one, two, names["rtt"])
    finally:
        nets.apply(both, None)
        nets.close()


def _setup_row(nets: UtilityNetworks, both: VapState, name: str) -> Row:
    bridges_only = tuple(dataclasses.replace(n, underlay=None) for n in both.networks)
    plain = dataclasses.replace(both, networks=bridges_only)
    timings: dict[str, list[float]] = {"vxlan": [], "plain": []}
    for _ in range(ROUNDS):
        for kind, state in (("vxlan", both), ("plain", plain)):
            started = time.perf_counter()
            _, outcome = nets.apply(None, state)
            timings[kind].append(time.perf_counter() - started)
            if not outcome.ok:
                raise RuntimeError(outcome.error)
            nets.apply(state, None)
    return Row(
        name,
        statistics.median(timings["vxlan"]),
        "s",
        statistics.median(timings["plain"]),
        "bridges only (libvirt over qemu+ssh)",
        note=f"median of {ROUNDS}; the difference is one ssh round of the port script per host",
    )


def _rtt_row(nets: UtilityNetworks, both: VapState, one: LabHost, two: LabHost, name: str) -> Row:
    lv = lab_van
    _, outcome = nets.apply(None, both)
    if not outcome.ok:
        raise RuntimeError(outcome.error)
    image = _web_image()
    pools = [lv.open_pool(h) for h in (one, two)]
    vms = []
    probe = None
    try:
        for (conn, pool), path, host in zip(pools, ("a", "b"), (one, two), strict=True):
            base = lv.upload_base(conn, pool, image)
            vm = both.vm(path)
            assert vm is not None
            vms.append(lv.boot(host, conn, pool, base, image, vm))
        same_vm, cross_vm = vms
        probe = lv.Probe(one, VNI, str(subnet_for_vlan(VNI).network_address + 2))
        for vm in vms:  # warm-up: ARP, FDB learning
            probe.ping(vm.ip, "-c", "3", "-i", "0.1")
        times: dict[str, list[float]] = {"same": [], "cross": []}
        for _ in range(ROUNDS):
            for kind, vm in (("same", same_vm), ("cross", cross_vm)):
                out = probe.ping(vm.ip, "-c", "20", "-i", "0.05").stdout
                times[kind] += lv.rtt_ms(out)
        if len(times["cross"]) < ROUNDS * 15 or len(times["same"]) < ROUNDS * 15:
            raise RuntimeError(f"too many lost pings: { ({k: len(v) for k, v in times.items()}) }")
        return Row(
            name,
            statistics.median(times["cross"]) / 1000,
            "s",
            statistics.median(times["same"]) / 1000,
            "same host (bridge only)",
            note=f"probe on host 1's bridge; TCG guests; {len(times['cross'])} replies each; "
            f"MTU 1450",
        )
    finally:
        if probe is not None:
            probe.remove()
        for vm in vms:
            vm.destroy()
        for conn, pool in pools:
            lv.close_pool(conn, pool)


def _web_image() -> Path:
    out = Path(tempfile.mkdtemp(prefix="bench-vxlan-"))
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-appliances"), str(out), "--json", "--only", "Web"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"build-appliances failed: {proc.stderr.strip()}")
    return Path(json.loads(proc.stdout.splitlines()[0])["dir"])


if __name__ == "__main__":  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for row in rows(lambda _: True):
        print(row)
