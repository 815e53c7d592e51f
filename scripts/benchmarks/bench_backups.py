"""Data-disk backups through libvirt's backup API on the local host (`qemu:///system`):
full (what the utility takes: `utility.adapters.host_storage.HostStorage.backup`) vs
incremental (a checkpoint made with the previous backup; only clusters dirtied since are
copied), same run, same VM.

The VM is a small persistent domain with no boot device (SeaBIOS waits; the disk is attached and
live) and a 256 MiB qcow2 data disk holding 128 MiB of data. Between backups, `CHANGED` bytes
are written into the running disk through qemu's HMP `qemu-io` (64 KiB at spread offsets), as a
guest would. Each round: a full backup with a checkpoint, the writes, then an incremental backup
and another full one (the baseline), timed from `virDomainBackupBegin` to the job's end, bytes
as the backup file's size. Median of `REPEAT` rounds.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path

from bench import Row

REPEAT = 3
DISK = 256 << 20
FILLED = 128 << 20
CHANGED = 4 << 20
NAMES = (
    "data-disk backup, 4 MiB changed of 128 MiB: seconds",
    "data-disk backup, 4 MiB changed of 128 MiB: bytes",
)


def _domain_xml(name: str, disk: Path) -> str:
    root = ET.Element("domain", type="qemu")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "memory", unit="MiB").text = "64"
    os_ = ET.SubElement(root, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    devices = ET.SubElement(root, "devices")
    node = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(node, "driver", name="qemu", type="qcow2")
    ET.SubElement(node, "source", file=str(disk))
    ET.SubElement(node, "target", dev="vdb", bus="virtio")
    return ET.tostring(root, encoding="unicode")


def _backup_xml(target: Path, incremental: str | None) -> str:
    root = ET.Element("domainbackup", mode="push")
    if incremental:
        ET.SubElement(root, "incremental").text = incremental
    disks = ET.SubElement(root, "disks")
    node = ET.SubElement(disks, "disk", name="vdb", backup="yes", type="file")
    ET.SubElement(node, "target", file=str(target))
    ET.SubElement(node, "driver", type="qcow2")
    return ET.tostring(root, encoding="unicode")


def _checkpoint_xml(name: str) -> str:
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = name
    disks = ET.SubElement(root, "disks")
    ET.SubElement(disks, "disk", name="vdb", checkpoint="bitmap")
    return ET.tostring(root, encoding="unicode")


def _backup(dom: object, target: Path, incremental: str | None, checkpoint: str | None) -> float:
    import libvirt

    began = time.perf_counter()
    dom.backupBegin(  # type: ignore[attr-defined]
        _backup_xml(target, incremental), _checkpoint_xml(checkpoint) if checkpoint else None, 0
    )
    while dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:  # type: ignore[attr-defined]
        time.sleep(0.01)
    took = time.perf_counter() - began
    stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)  # type: ignore[attr-defined]
    if stats.get("type") != libvirt.VIR_DOMAIN_JOB_COMPLETED:
        raise RuntimeError(f"backup job did not complete: {stats}")
    return took


def _write(dom: object, round_: int) -> None:
    import libvirt_qemu

    xml = ET.fromstring(dom.XMLDesc(0))  # type: ignore[attr-defined]
    alias = xml.find("devices/disk/alias")
    assert alias is not None
    step = FILLED // (CHANGED // (64 << 10))
    for offset in range(0, FILLED, step):
        device = f"/machine/peripheral/{alias.get('name')}/virtio-backend"
        command = f'qemu-io -d {device} "write -P {0x40 + round_} {offset} 64k"'
        said = libvirt_qemu.qemuMonitorCommand(
            dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        )
        if "rror" in said:
            raise RuntimeError(f"{command}: {said.strip()}")


def measure() -> dict[str, list[float]]:
    """Per round: full and incremental seconds and bytes (the module docstring)."""
    import libvirt

    work = Path(tempfile.mkdtemp(prefix="bb-", dir="/var/tmp"))
    work.chmod(0o755)
    conn = libvirt.open("qemu:///system")
    name = "bench-backup-" + secrets.token_hex(3)
    disk = work / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(DISK)], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x11 0 {FILLED}", str(disk)],
        check=True, capture_output=True,
    )  # fmt: skip
    out: dict[str, list[float]] = {"full_s": [], "inc_s": [], "full_b": [], "inc_b": []}
    dom = conn.defineXML(_domain_xml(name, disk))
    try:
        dom.create()
        for r in range(REPEAT):
            base = work / f"base{r}.qcow2"
            _backup(dom, base, None, f"c{r}")
            _write(dom, r)
            inc, full = work / f"inc{r}.qcow2", work / f"full{r}.qcow2"
            out["inc_s"].append(_backup(dom, inc, f"c{r}", None))
            out["full_s"].append(_backup(dom, full, None, None))
            out["inc_b"].append(float(inc.stat().st_size))
            out["full_b"].append(float(full.stat().st_size))
            for path in (base, inc, full):
                path.unlink()
    finally:
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass
        for checkpoint in dom.listAllCheckpoints():
            checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
    return out


def rows(only: Callable[[str], bool]) -> Iterable[Row]:
    if not any(only(n) for n in NAMES):
        return
    if os.geteuid() != 0:
        raise RuntimeError("qemu:///system needs root")
    found = measure()
    med = {k: statistics.median(v) for k, v in found.items()}
    yield Row(
        NAMES[0], med["inc_s"], "s", baseline=med["full_s"],
        baseline_label="full backup (what the utility takes), same VM, same run",
        note=f"incremental from a checkpoint; median of {REPEAT}; local file target",
    )  # fmt: skip
    yield Row(
        NAMES[1], med["inc_b"], "B", baseline=med["full_b"],
        baseline_label="full backup, same run",
        note="backup file size (what a download to the utility would carry)",
    )  # fmt: skip
