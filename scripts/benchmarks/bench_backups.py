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

Over `qemu+ssh://` (a lab host, `scripts/lab up 1` made for the run when none is up): the same,
through the utility's own path (`HostStorage.backup`: the data disk a volume of the host's pool,
the backup file downloaded with `virStorageVolDownload`), timed including the download, bytes as
downloaded.
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
REMOTE = (
    "data-disk backup over qemu+ssh (lab host), 4 MiB changed of 128 MiB: seconds",
    "data-disk backup over qemu+ssh (lab host), 4 MiB changed of 128 MiB: bytes",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _write(dom: object, round_: int, fill: bool = False) -> None:
    import libvirt_qemu

    xml = ET.fromstring(dom.XMLDesc(0))  # type: ignore[attr-defined]
    alias = xml.find("devices/disk/alias")
    assert alias is not None
    step = FILLED // (CHANGED // (64 << 10))
    writes = [f"write -P 0x11 0 {FILLED}"] if fill else []
    writes += [f"write -P {0x40 + round_} {o} 64k" for o in range(0, FILLED, step)]
    for what in writes:
        device = f"/machine/peripheral/{alias.get('name')}/virtio-backend"
        command = f'qemu-io -d {device} "{what}"'
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


def _lab() -> tuple[object, bool]:
    """The running lab (made with one host if none is up) and whether this run made it."""
    from multihost_lab import Lab

    try:
        lab = Lab.load()
        if all(Path(f"/proc/{pid}").exists() for h in lab.hosts for pid in h.pids.values()):
            return lab, False
    except Exception:  # noqa: BLE001 - no lab or a stale one: make one
        pass
    env = {**os.environ, "COLLECTIVE_LAB_LOCKED": "1"}
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "lab"), "up", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"scripts/lab up 1: {done.stderr.strip()}")
    return Lab.load(), True


def measure_remote() -> dict[str, list[float]]:
    """Full and incremental backups of a lab host's VM through `HostStorage.backup`."""
    import sys

    sys.path.insert(0, str(REPO_ROOT))
    from multihost_lab import lab_lock

    from utility.adapters.host_storage import overlay_name
    from utility.adapters.libvirt_host import LibvirtHost
    from utility.core.desired_state import Disk, Vm

    out: dict[str, list[float]] = {"full_s": [], "inc_s": [], "full_b": [], "inc_b": []}
    name = "bench-backup-" + secrets.token_hex(3)
    disk = Disk("vdb", f"/nonexistent/{name}/data.qcow2", "data", DISK)
    vm = Vm(
        path="b", type="bench", origin=None, host="lab", domain=name, memory=64 << 20, vcpus=1,
        vm_dir=f"/nonexistent/{name}", guest_socket="", disks=(disk,), interfaces=(),
        params=(), sensitive=(), provides=(), requires=(), needs=(),
    )  # fmt: skip
    with lab_lock():
        lab, made = _lab()
        target = lab.hosts[0]  # type: ignore[attr-defined]
        host = LibvirtHost(target.name, target.uri)
        storage = host.storage
        try:
            storage.ensure_pool()
            path = storage._data_disk(overlay_name(vm, disk), disk)
            dom = host.connection().createXML(_domain_xml(name, Path(path)), 0)
            try:
                _write(dom, 0, fill=True)
                for r in range(REPEAT):

                    def timed(since: str | None, checkpoint: str) -> tuple[float, float]:
                        got = [0]
                        began = time.perf_counter()
                        storage.backup(
                            vm, disk, lambda b: got.__setitem__(0, got[0] + len(b)),
                            checkpoint, since,
                        )  # fmt: skip
                        return time.perf_counter() - began, float(got[0])

                    timed(None, f"collective-vdb-a{r}")
                    _write(dom, r + 1)
                    inc = timed(f"collective-vdb-a{r}", f"collective-vdb-b{r}")
                    full = timed(None, f"collective-vdb-c{r}")
                    out["inc_s"].append(inc[0])
                    out["inc_b"].append(inc[1])
                    out["full_s"].append(full[0])
                    out["full_b"].append(full[1])
            finally:
                dom.destroy()
                storage.release(vm, keep_data=False)
        finally:
            host.close()
            if made:
                subprocess.run(
                    [str(REPO_ROOT / "scripts" / "lab"), "down"],
                    capture_output=True, env={**os.environ, "COLLECTIVE_LAB_LOCKED": "1"},
                    timeout=300,
                )  # fmt: skip
    return out


def rows(only: Callable[[str], bool]) -> Iterable[Row]:
    if any(only(n) for n in REMOTE):
        if os.geteuid() != 0:
            raise RuntimeError("the lab needs root")
        med = {k: statistics.median(v) for k, v in measure_remote().items()}
        yield Row(
            REMOTE[0], med["inc_s"], "s", baseline=med["full_s"],
            baseline_label="full backup (no checkpoint), same VM, same run",
            note=f"HostStorage.backup incl. download over ssh; median of {REPEAT}",
        )  # fmt: skip
        yield Row(
            REMOTE[1], med["inc_b"], "B", baseline=med["full_b"],
            baseline_label="full backup, same run",
            note="bytes downloaded from the host",
        )  # fmt: skip
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
