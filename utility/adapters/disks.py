"""VM disks with qemu-img, in the CVL file's directory, one subdirectory per VM component path.

- a program disk is a fresh qcow2 copy-on-write overlay over the version's image chain, made at
  every start and update (the instance's software changes are thrown away, as in the paper);
- a data disk is created empty at its CVL size if absent, and never touched if present (the
  appliance initialises an all-zero disk on first boot).
Every file appears atomically: created under a temporary name, then renamed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from utility.core.desired_state import Disk, Vm
from utility.errors import DiskError

QCOW2_MAGIC = b"QFI\xfb"


def _qemu_img(*args: str) -> None:
    try:
        done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DiskError("qemu-img is not installed (Debian package qemu-utils)") from None
    if done.returncode != 0:
        raise DiskError(f"qemu-img {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")


def image_format(path: Path) -> str:
    """ "qcow2" when the file starts with the qcow2 magic, else "raw"."""
    with path.open("rb") as f:
        return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"


def make_overlay(disk: Disk) -> None:
    """Replace `disk.path` with a fresh empty overlay over `disk.base`."""
    base = Path(disk.base)
    if not base.is_file():
        raise DiskError(f"{disk.path}: base image {base} does not exist")
    target = Path(disk.path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-F", image_format(base), "-b", str(base.resolve()), str(tmp)
    )
    tmp.replace(target)


def ensure_data_disk(disk: Disk) -> bool:
    """Create the data disk empty at its size unless it exists; True if created."""
    target = Path(disk.path)
    if target.exists():
        return False
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    _qemu_img("create", "-q", "-f", "qcow2", str(tmp), str(disk.size))
    try:
        os.link(tmp, target)  # never overwrites a data disk that appeared meanwhile
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def prepare(vm: Vm) -> None:
    """Make the VM's directory, fresh program overlays, and missing data disks."""
    vm_dir = Path(vm.vm_dir)
    vm_dir.mkdir(parents=True, exist_ok=True)
    # traversable but not listable by others: qemu runs as its own user on real hosts and
    # reaches the disks (libvirt chowns them while the VM runs) and the guest socket by path
    vm_dir.chmod(0o711)
    for disk in vm.disks:
        if disk.role == "program":
            make_overlay(disk)
        else:
            ensure_data_disk(disk)


def discard_overlays(vm: Vm) -> None:
    """Delete the VM's program overlays (data disks stay)."""
    for disk in vm.disks:
        if disk.role == "program":
            Path(disk.path).unlink(missing_ok=True)


def move_to_attic(vm: Vm, attic: Path) -> Path | None:
    """Move a removed VM's directory (data disks included) to `attic/<path>-<timestamp>`."""
    return move_directory_to_attic(Path(vm.vm_dir), vm.path, attic)


def move_directory_to_attic(source: Path, path: str, attic: Path) -> Path | None:
    """Move component `path`'s directory `source` to `attic/<path>-<timestamp>` (if it exists)."""
    if not source.exists():
        return None
    attic.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = attic / f"{path}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6}"
    shutil.move(str(source), str(target))
    return target


BACKUP_SUFFIX = ".pre-update"


def snapshot_data(vm: Vm) -> list[str]:
    """Keep a copy of each data disk before an update (the VM must be stopped); return them.

    A sparse copy rather than an internal qcow2 snapshot: a snapshot would rewrite the data
    disk's metadata even when the update succeeds, and the promise is that a successful update
    leaves the data disk the same file with the same bytes. The copy costs the disk's allocated
    size, once per update, and is deleted when the new version is ready.
    """
    taken = []
    for disk in vm.disks:
        if disk.role == "data" and Path(disk.path).exists():
            backup = disk.path + BACKUP_SUFFIX
            tmp = backup + ".tmp"
            subprocess.run(
                ["cp", "--sparse=always", "--preserve=mode,timestamps", disk.path, tmp],
                check=True,
                capture_output=True,
            )
            os.replace(tmp, backup)
            taken.append(disk.path)
    return taken


def restore_data(paths: list[str]) -> None:
    """Put back the data disks copied by `snapshot_data` (atomic rename each)."""
    for path in paths:
        os.replace(path + BACKUP_SUFFIX, path)


def restore_interrupted(vm: Vm) -> list[str]:
    """Put back the pre-update copies an interrupted update left of the VM's data disks (the
    copy is complete once it has its name: `snapshot_data` renames it last); the paths."""
    found = [d.path for d in vm.disks if d.role == "data" and Path(d.path + BACKUP_SUFFIX).exists()]
    restore_data(found)
    return found


def drop_snapshots(paths: list[str]) -> None:
    """Delete the pre-update copies after a successful update."""
    for path in paths:
        Path(path + BACKUP_SUFFIX).unlink(missing_ok=True)
