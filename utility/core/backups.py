"""Backups of data disks as plain data: their names, which generations to keep, which to use.

A backup of a data disk is one qcow2 file named by the UTC time it was taken
(`20261202T015500.123456Z.qcow2`), so names sort by age and a name says its time without any
metadata file to lose. The I/O (taking a backup through libvirt, checking it, deleting) lives in
`utility.adapters.backups`; this module only decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

DEFAULT_KEEP = 3
"""Generations of each data disk's backup kept (the newest valid ones)."""
DEFAULT_INTERVAL = 600.0
"""Seconds between periodic backups (`cui utility serve --backup-interval`; 0: off)."""
SUFFIX = ".qcow2"
_NAME = re.compile(r"(\d{8}T\d{6})\.(\d{6})Z\.qcow2")


@dataclass(frozen=True, order=True)
class Generation:
    """One backup file of a data disk: when it was taken and its file name."""

    taken: float
    name: str


def backup_name(taken: float) -> str:
    """The file name of a backup taken at `taken` (Unix seconds), sortable by time."""
    when = datetime.fromtimestamp(taken, UTC)
    return when.strftime("%Y%m%dT%H%M%S.%fZ") + SUFFIX


def parse_name(name: str) -> Generation | None:
    """The generation a file name stands for; None for any other file (temp files, strays)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    try:
        when = datetime.strptime(f"{match[1]}.{match[2]}", "%Y%m%dT%H%M%S.%f")
    except ValueError:
        return None
    return Generation(when.replace(tzinfo=UTC).timestamp(), name)


def generations(names: Iterable[str]) -> list[Generation]:
    """The backups among `names`, newest first (other names are ignored)."""
    found = [g for g in map(parse_name, names) if g is not None]
    return sorted(found, reverse=True)


def latest_valid(names: Iterable[str], valid: Callable[[str], bool]) -> Generation | None:
    """The newest backup among `names` that `valid` accepts (a corrupt or truncated one is
    skipped for the next older); None when there is none."""
    for generation in generations(names):
        if valid(generation.name):
            return generation
    return None


def to_prune(names: Iterable[str], keep: int, valid: Callable[[str], bool]) -> list[str]:
    """The backup names to delete so that the `keep` newest valid ones remain: every older
    generation, and every invalid one (a backup that fails its check never counts).

    Raises:
        ValueError: `keep` < 1 (the newest valid backup is never deleted).
    """
    if keep < 1:
        raise ValueError(f"backup generations to keep must be at least 1, not {keep}")
    kept: list[str] = []
    delete: list[str] = []
    for generation in generations(names):
        if len(kept) < keep and valid(generation.name):
            kept.append(generation.name)
        else:
            delete.append(generation.name)
    return delete
