"""`cui host drain` of a lab host running 3 Groupware VMs (`scripts/lab`, as root): seconds and
bytes the live migrations moved vs a full copy of those VMs' disks, same run; per-VM downtime.

The Groupware VAN starts on 3 lab hosts (`groupware_network.started_on_lab`: spread placement,
VXLAN); LDAP then moves (`cui move`) onto the host running DNS, so it runs three VMs, DNS and
LDAP among them (both with data disks). The drain copies, per VM, its memory and only the top
images of its disks (program overlay, data disk) into the target's pool; the chain objects go
by content address only where the target lacks them (the drain's bytes are libvirt's job
statistics: memory + disk). The baseline is a full copy of the same VMs' disks, measured on the
same files just before the drain: every file of each disk's chain, the overlay and the data
disk, streamed as plain volume uploads (`virStorageVolUpload` into scratch volumes, deleted
afterwards) into the pool of a host that stays; its bytes are the files' sizes. With
COLLECTIVE_BENCH_LAB_RUNS=N the host is undrained, the three VMs moved back, and the drain
repeated: medians of N. Real VMs under TCG on a 2-core machine shared with other work; the lab
is machine-wide: this holds its lock throughout and always brings it down.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench import Row

SCRIPTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS))
import multihost_lab  # noqa: E402
from groupware_network import GroupwareLab, run, started_on_lab  # noqa: E402

SECONDS = "Lab drain of a host with 3 Groupware VMs: seconds vs a full copy of their disks"
BYTES = "Lab drain of a host with 3 Groupware VMs: disk bytes moved vs the disks' full size"
TOTAL = "Lab drain of a host with 3 Groupware VMs: all bytes moved (memory + disks)"
DOWNTIME = "Lab drain: per-VM migration downtime (libvirt's)"
RUNS = int(os.environ.get("COLLECTIVE_BENCH_LAB_RUNS", "1"))
INSIDE = "/var/lib/libvirt/"


def rows(only: Callable[[str], bool]) -> Iterable[Row]:
    if not any(only(n) for n in (SECONDS, BYTES, TOTAL, DOWNTIME)):
        return []
    if os.geteuid() != 0:
        raise RuntimeError("the multi-host lab needs root")
    seconds: list[float] = []
    moved: list[float] = []
    disks: list[float] = []
    full_seconds: list[float] = []
    full_bytes: list[float] = []
    downtimes: list[float] = []
    modes: set[str] = set()
    with multihost_lab.lab_lock():
        made = multihost_lab.up(3)
        try:
            with started_on_lab(made.hosts) as g:
                assert g.cvl is not None
                host = g.hosts_of()["d"]
                for n in range(RUNS):
                    if n:
                        g.cui("host", "undrain", host)
                    _gather(g, host, ("d", "l"))
                    keep = next(h for h in made.hosts if h.name != host)
                    size, took = _full_copy(g, g.lab_host(host), keep)
                    full_bytes.append(size)
                    full_seconds.append(took)
                    began = time.monotonic()
                    result = json.loads(g.cui("host", "drain", host, "--json"))
                    seconds.append(time.monotonic() - began)
                    if result["failed"] or len(result["moved"]) != 3:
                        raise RuntimeError(f"drain of {host}: {result}")
                    moved.append(sum(m["bytes_copied"] + m["chain_bytes"] for m in result["moved"]))
                    disks.append(sum(m["disk_bytes"] + m["chain_bytes"] for m in result["moved"]))
                    downtimes += [m["downtime_ms"] / 1000 for m in result["moved"]]
                    modes |= {str(m["mode"]) for m in result["moved"]}
                    print(
                        f"drain {n + 1}: {seconds[-1]:.1f} s, {moved[-1]} bytes; full copy "
                        f"{took:.1f} s, {size} bytes; "
                        + ", ".join(
                            f"{m['path']} {m['downtime_ms']} ms/{m['bytes_copied']} B "
                            f"(disks {m['disk_bytes']} B, chain {m['chain_bytes']} B)"
                            for m in result["moved"]
                        ),
                        file=sys.stderr,
                    )
        finally:
            multihost_lab.down()
    runs = f"median of {RUNS} drain(s)" if RUNS > 1 else "1 drain"
    return [
        Row(
            SECONDS,
            statistics.median(seconds),
            "s",
            statistics.median(full_seconds),
            "full copy of the 3 VMs' disks (chain + overlay + data) as volume uploads, same run",
            note=f"{runs} ({_fmt(seconds)} s); 3 live migrations one after another, "
            f"{'/'.join(sorted(modes))}; TCG",
        ),
        Row(
            BYTES,
            statistics.median(disks),
            "B",
            statistics.median(full_bytes),
            "the same disks' files (chain + overlay + data), same run",
            note=f"{runs}; ours = the top images libvirt copied (its `disk_processed`) + "
            "chain objects the targets lacked (uploaded by content address first)",
        ),
        Row(
            TOTAL,
            statistics.median(moved),
            "B",
            note=f"{runs}; memory dominates: the guests' RAM (96-128 MiB each) crosses whatever "
            "the disks are; libvirt's job statistics + chain uploads",
        ),
        Row(
            DOWNTIME,
            statistics.median(downtimes),
            "s",
            note=f"median of {len(downtimes)} migrations (each {_fmt(downtimes, 1000)} ms)",
        ),
    ]


def _fmt(values: list[float], scale: float = 1.0) -> str:
    return "/".join(f"{v * scale:.0f}" for v in values)


def _gather(g: GroupwareLab, host: str, wanted: tuple[str, ...]) -> None:
    """Move VMs onto `host` (first those in `wanted`, then any but the firewall) until it runs
    three."""
    assert g.cvl is not None
    placed = g.hosts_of()
    others = [p for p in (*wanted, *sorted(placed)) if p != "f"]
    for path in dict.fromkeys(others):
        if sum(1 for h in g.hosts_of().values() if h == host) >= 3:
            return
        if g.hosts_of()[path] != host:
            g.cui("move", str(g.cvl), path, "--to", host)


def _full_copy(g: GroupwareLab, source: Any, dest: Any) -> tuple[int, float]:
    """Bytes and seconds of uploading every file of the disks of `source`'s VMs (each disk's
    whole chain) into scratch volumes on `dest`, through libvirt."""
    import libvirt

    files: list[Path] = []
    for row in g.status().values():
        if row["host"] != source.name:
            continue
        xml = run(["virsh", "-c", source.uri, "dumpxml", str(row["domain"])]).stdout
        for node in ET.fromstring(xml).iterfind("devices/disk/source"):
            chain = run(
                [*source.nsenter(), "qemu-img", "info", "-U", "--backing-chain", "--output=json"]
                + [node.get("file", "")]
            ).stdout
            for image in json.loads(chain):
                inside = str(image["filename"])
                files.append(Path(source.directory, "lib", inside.removeprefix(INSIDE)))
    conn = libvirt.open(dest.uri)
    try:
        pool = conn.storagePoolLookupByName("collective")
        total = 0
        began = time.monotonic()
        for n, path in enumerate(files):
            size = path.stat().st_size
            vol = pool.createXML(
                f"<volume><name>bench-full-{n}</name><capacity>{size}</capacity>"
                "<target><format type='raw'/></target></volume>",
                0,
            )
            try:
                stream = conn.newStream(0)
                vol.upload(stream, 0, size, 0)
                with path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        stream.send(chunk)
                stream.finish()
                total += size
            finally:
                vol.delete(0)
        return total, time.monotonic() - began
    finally:
        conn.close()


if __name__ == "__main__":  # pragma: no cover
    for row in rows(lambda _: True):
        print(row)
