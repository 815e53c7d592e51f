"""Backups of data disks in the utility's own storage, taken through libvirt.

Each data disk's backups live beside it in its VM directory:
`<state>/vaps/<id>/<component>/backups/<target>/<UTC time>.qcow2` (names and pruning:
`utility.core.backups`). A backup is taken by `HostStorage.backup` (libvirt's backup API, push
mode: a point-in-time copy of the running disk, as consistent as a power cut at that instant;
incremental when it can, see `take`), streamed into a hidden temporary file, synced, checked by
our own qcow2 parser (`reposerver.qcow2`: version 3, no backing file, no external data file,
tables inside the file), and only then renamed to its name: a torn or corrupt backup never
counts. Older generations beyond `keep`, and any file that fails the check, are deleted
afterwards.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from utility.adapters.host_storage import HostStorage, checkpoint_name
from utility.core import backups as plan
from utility.core.desired_state import Disk, Vm
from utility.errors import DiskError

BACKUPS_DIR = "backups"


@dataclass(frozen=True)
class Taken:
    """One backup taken: its file, when, how long it took, its bytes, and what it cost."""

    path: Path
    taken: float
    seconds: float
    bytes: int  # the generation's file
    wire_bytes: int  # what came from the host (only the changed clusters when incremental)
    incremental: bool


def backup_dir(disk: Disk) -> Path:
    """Where the backups of data disk `disk` live (beside the disk in its VM directory)."""
    return Path(disk.path).parent / BACKUPS_DIR / disk.target


_CHECKED: dict[tuple[str, int, int], bool] = {}
"""Verdicts of `is_valid` by (path, mtime in ns, size): `cui status` asks for every data disk
of every VAP, and a backup file changes only by being replaced (a new mtime)."""


def is_valid(path: Path) -> bool:
    """True when `path` is a whole, standalone qcow2 image by our own parser (parsed once per
    version of the file)."""
    try:
        info = path.stat()
    except OSError:
        return False
    key = (str(path), info.st_mtime_ns, info.st_size)
    verdict = _CHECKED.get(key)
    if verdict is None:
        verdict = _parse_valid(path)
        if len(_CHECKED) >= 4096:
            _CHECKED.clear()
        _CHECKED[key] = verdict
    return verdict


def _parse_valid(path: Path) -> bool:
    from reposerver import qcow2
    from reposerver.errors import IntegrityError

    try:
        header = qcow2.read(path)
        return header.backing_name is None and qcow2.check_object(header, str(path)) is None
    except (OSError, IntegrityError):
        return False


def _names(directory: Path) -> list[str]:
    try:
        return [p.name for p in directory.iterdir() if p.is_file()]
    except FileNotFoundError:
        return []


def latest(disk: Disk) -> tuple[plan.Generation, Path] | None:
    """The newest valid backup of `disk` (corrupt or truncated ones skipped), if any."""
    directory = backup_dir(disk)
    found = plan.latest_valid(_names(directory), lambda n: is_valid(directory / n))
    return None if found is None else (found, directory / found.name)


def prune(disk: Disk, keep: int) -> list[str]:
    """Delete the generations of `disk` beyond the `keep` newest valid ones; their names."""
    directory = backup_dir(disk)
    doomed = plan.to_prune(_names(directory), keep, lambda n: is_valid(directory / n))
    for name in doomed:
        (directory / name).unlink(missing_ok=True)
    return doomed


def take(
    storage: HostStorage, vm: Vm, disk: Disk, keep: int = plan.DEFAULT_KEEP, now: float = 0.0
) -> Taken:
    """Back up data disk `disk` of the running `vm` into the utility's storage (module
    docstring); prune older generations.

    Incremental when the domain still has the checkpoint the latest valid backup made: only
    the clusters written since cross the wire, and the utility folds them onto that backup
    (`qemu-img rebase -u` then `convert`, every format named), so each generation on disk is
    a whole standalone image that restores and prunes on its own.

    Raises:
        DiskError: the backup failed its check or could not be written (nothing is left).
        UtilityError: libvirt refused or the job failed (from `HostStorage.backup`).
    """
    taken = now or time.time()
    directory = backup_dir(disk)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = directory / plan.backup_name(taken)
    previous = latest(disk)
    since = checkpoint_name(disk, previous[1].name) if previous else None
    tmp = directory / f".{final.name}.{os.getpid()}.part"
    whole = directory / f".{final.name}.{os.getpid()}.whole.part"
    began = time.monotonic()
    try:
        with tmp.open("wb") as f:
            job = storage.backup(vm, disk, f.write, checkpoint_name(disk, final.name), since)
            f.flush()
            os.fsync(f.fileno())
        wire = tmp.stat().st_size
        if job.since is not None and previous is not None:
            _fold(tmp, previous[1], whole)
            os.replace(whole, tmp)
        if not is_valid(tmp):
            raise DiskError(
                f"{vm.path}: the backup of data disk {disk.target} is not a whole standalone "
                "qcow2 image; it was discarded"
            )
        size = tmp.stat().st_size
        os.replace(tmp, final)
        _sync_dir(directory)
    except OSError as exc:
        raise DiskError(f"{vm.path}: backup of data disk {disk.target}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
        whole.unlink(missing_ok=True)
    prune(disk, keep)
    return Taken(final, taken, time.monotonic() - began, size, wire, job.since is not None)


def _fold(increment: Path, base: Path, out: Path) -> None:
    """Write to `out` the whole image: `base` with `increment`'s allocated clusters over it."""
    try:
        subprocess.run(
            ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", str(base.resolve()),
             "-F", "qcow2", str(increment)],
            check=True, capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        subprocess.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", "-o", "compat=1.1",
             str(increment), str(out)],
            check=True, capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        with out.open("rb+") as f:
            os.fsync(f.fileno())
    except subprocess.CalledProcessError as exc:
        raise DiskError(
            f"folding an incremental backup onto {base.name}: {exc.stderr.strip()}"
        ) from None


def restore(disk: Disk, source: Path) -> None:
    """Put backup `source` in place as `disk`'s file in its VM directory (copy, then rename)."""
    target = Path(disk.path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.restore")
    try:
        with source.open("rb") as src, tmp.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
