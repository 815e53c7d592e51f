"""The state database is checked before the daemon uses it, and migrated in order.

At start (`check_database`, before anything opens or creates the file):
- missing or empty, and the state directory shows VAPs existed (`VAPS_MARKER`, written when the
  first VAP starts, or guest sockets left in `run/`): refused, naming the file to restore and
  the `--reinitialise` flag; never a silent empty start that would hand out a running VAP's
  VLANs and addresses again;
- not an SQLite file, failing `PRAGMA integrity_check`, or with a `PRAGMA user_version` newer
  than this utility knows: refused the same way (with or without VAPs: it cannot be used);
- with `reinitialise`, a bad database (and its -wal/-shm) is moved aside to
  `utility.sqlite3.broken-TIMESTAMP`, never deleted, and the daemon starts empty.

Then `migrate` brings `user_version` up to `SCHEMA_VERSION`, one migration at a time in order.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from utility.errors import DatabaseRefused

DB_NAME = "utility.sqlite3"
VAPS_MARKER = "vaps-existed"
SQLITE_HEADER = b"SQLite format 3\x00"


def _baseline(_db: sqlite3.Connection) -> None:
    """Version 1: the tables of `state.SCHEMA` (created by `Store` with IF NOT EXISTS)."""


def _seen_events(_db: sqlite3.Connection) -> None:
    """Version 2: `seen_events` (publish-event replay guard), also created by `Store`."""


def _token_created(db: sqlite3.Connection) -> None:
    """Version 3: `tokens.created` (`cui utility token list`); `Store` adds it too."""
    from utility.adapters.store import add_token_created

    add_token_created(db)


def _moves(db: sqlite3.Connection) -> None:
    """Version 4: `host_health` (failure detection, drain) and `vm_restores`; `Store` too."""
    from utility.adapters.store import add_moves_tables

    add_moves_tables(db)


def _host_underlay(db: sqlite3.Connection) -> None:
    """Version 5: `hosts.underlay` (`cui host add --underlay`, VXLAN); `Store` adds it too."""
    from utility.adapters.store import add_host_underlay

    add_host_underlay(db)


def _vaps_by_name(db: sqlite3.Connection) -> None:
    """Version 6: VAPs identified by (owner, name), not by CVL path; bundles kept per version
    (`Store` migrates too, before it creates the new tables)."""
    from utility.adapters.store import vaps_by_name

    vaps_by_name(db)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _baseline,
    2: _seen_events,
    3: _token_created,
    4: _moves,
    5: _host_underlay,
    6: _vaps_by_name,
}
"""Migration to version N, applied in ascending order; a new schema change appends one."""
SCHEMA_VERSION = max(MIGRATIONS)


def mark_vaps_exist(state_dir: Path) -> None:
    """Record, outside the database, that this state directory has held VAPs."""
    marker = state_dir / VAPS_MARKER
    if not marker.exists():
        marker.write_text("VAPs were started with this state directory\n")


def vaps_existed(state_dir: Path) -> bool:
    """Whether the directory shows VAPs existed: the marker, or guest sockets left in run/."""
    run = state_dir / "run"
    return (state_dir / VAPS_MARKER).exists() or (run.is_dir() and any(run.iterdir()))


def _problem(path: Path) -> str | None:
    """What is wrong with the database file at `path` (None: usable)."""
    with path.open("rb") as f:
        if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            return "is not an SQLite database (truncated or overwritten)"
    try:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            rows = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
            version = db.execute("PRAGMA user_version").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return f"cannot be read ({exc})"
    if rows != ["ok"]:
        return f"fails PRAGMA integrity_check ({'; '.join(map(str, rows[:3]))})"
    if version > SCHEMA_VERSION:
        return f"has schema version {version}, newer than this utility's {SCHEMA_VERSION}"
    return None


def old_layout_problem(path: Path) -> str | None:
    """The refusal text for a database of the old layout (VAPs keyed by CVL path) that still
    has active VAPs (None otherwise: it is migrated when opened)."""
    from utility.adapters.store import old_layout_active, old_layout_refusal

    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        active = old_layout_active(db)
    finally:
        db.close()
    return old_layout_refusal(active) if active else None


def _refusal(path: Path, what: str) -> DatabaseRefused:
    return DatabaseRefused(
        f"state database {path} {what}. Restore {path.name} (with its -wal file, if any) "
        f"from a backup into {path.parent}, or start with --reinitialise to move it aside "
        "and start with an empty database (VAPs still running on the hosts are then "
        "reported as unowned, never adopted)"
    )


def _move_aside(path: Path) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(path.with_name(f"{path.name}{suffix}.broken-{stamp}"))


def check_database(state_dir: Path, reinitialise: bool = False) -> None:
    """Refuse a missing, corrupt or too-new database where it matters (see module docstring).

    Raises:
        DatabaseRefused: with the file to restore and the flag to start over.
    """
    path = state_dir / DB_NAME
    if not path.exists() or path.stat().st_size == 0:
        what = "is missing" if not path.exists() else "is empty"
        if vaps_existed(state_dir) and not reinitialise:
            raise _refusal(path, f"{what}, but VAPs were started with this state directory")
        if path.exists():
            _move_aside(path)
        return
    problem = _problem(path)
    if problem is None:
        old = old_layout_problem(path)
        if old is not None:
            raise DatabaseRefused(f"state database {path}: {old}")
        return
    if not reinitialise:
        raise _refusal(path, problem)
    _move_aside(path)


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations newer than the database's `user_version`, in order; the new version."""
    current = db.execute("PRAGMA user_version").fetchone()[0]
    for version in sorted(v for v in MIGRATIONS if v > current):
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {int(version)}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        current = version
    return current
