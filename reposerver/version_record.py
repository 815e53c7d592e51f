"""What an accepted push recorded about each version, so pages never re-resolve imports.

Evaluating a version's CVL resolves its imports, and on the server that is a fetch made on
someone else's behalf. The push that creates a version evaluates it once, under the push's
restricted resolver, and writes the result to `versions/N.json` in the repository (atomically:
a temporary file renamed into place). The pages read that record; they never fetch anything
for a page viewer.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RECORD_DIR = "versions"


def record_path(repo_path: Path, number: int) -> Path:
    """Where version `number`'s record lives."""
    return Path(repo_path) / RECORD_DIR / f"{int(number)}.json"


def write(repo_path: Path, number: int, record: dict[str, Any]) -> Path:
    """Write version `number`'s record atomically (temporary file, fsync, rename)."""
    target = record_path(repo_path, number)
    target.parent.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{number}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(record, out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read(repo_path: Path, number: int) -> dict[str, Any] | None:
    """Version `number`'s record, or None when no push recorded one (or it is unreadable)."""
    try:
        data = json.loads(record_path(repo_path, number).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
