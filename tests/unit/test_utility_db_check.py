"""The state database check at start: a refusal with the way to recover, never an empty start."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from utility.adapters.db_check import (
    DB_NAME,
    SCHEMA_VERSION,
    VAPS_MARKER,
    check_database,
    mark_vaps_exist,
    migrate,
)
from utility.adapters.store import Store
from utility.errors import DatabaseRefused


def _store_with_rows(state: Path, rows: int = 400) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    store = Store(state)
    migrate(store.read())
    store.add_vlans(list(range(1, rows + 1)))
    store.read().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.read().close()
    return state / DB_NAME


def test_missing_database_without_vaps_is_a_fresh_start(tmp_path: Path) -> None:
    check_database(tmp_path)
    assert not (tmp_path / DB_NAME).exists()


def test_missing_database_where_vaps_existed_is_refused(tmp_path: Path) -> None:
    mark_vaps_exist(tmp_path)
    with pytest.raises(DatabaseRefused) as refused:
        check_database(tmp_path)
    text = str(refused.value)
    assert DB_NAME in text and "--reinitialise" in text and "is missing" in text
    assert not (tmp_path / DB_NAME).exists()  # nothing created


def test_guest_sockets_in_run_count_as_vaps(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "col-x.sock").write_text("")
    (tmp_path / DB_NAME).write_bytes(b"")
    with pytest.raises(DatabaseRefused, match="is empty"):
        check_database(tmp_path)
    assert (tmp_path / DB_NAME).stat().st_size == 0


@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_database_is_refused_even_without_marker(tmp_path: Path, keep: float) -> None:
    path = _store_with_rows(tmp_path / "state")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    before = path.read_bytes()
    with pytest.raises(DatabaseRefused, match="restore|Restore"):
        check_database(tmp_path / "state")
    assert path.read_bytes() == before


def test_overwritten_pages_fail_integrity_check(tmp_path: Path) -> None:
    path = _store_with_rows(tmp_path / "state", 3000)
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 4096
    middle = len(data) // 4096 // 2 * 4096
    data[middle : middle + 2 * 4096] = b"\xa5" * (2 * 4096)
    path.write_bytes(bytes(data))
    with pytest.raises(DatabaseRefused) as refused:
        check_database(tmp_path / "state")
    assert "integrity_check" in str(refused.value) or "cannot be read" in str(refused.value)


def test_header_overwritten_is_not_a_database(tmp_path: Path) -> None:
    path = _store_with_rows(tmp_path / "state")
    path.write_bytes(b"garbage!" * 512)
    with pytest.raises(DatabaseRefused, match="not an SQLite database"):
        check_database(tmp_path / "state")


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = _store_with_rows(tmp_path / "state")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(DatabaseRefused, match="newer than this utility"):
        check_database(tmp_path / "state")


def test_reinitialise_moves_the_bad_database_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = _store_with_rows(state)
    (state / VAPS_MARKER).write_text("x")
    path.write_bytes(b"garbage!" * 512)
    check_database(state, reinitialise=True)
    assert not path.exists()
    aside = list(state.glob(DB_NAME + ".broken-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"garbage!" * 512
    fresh = Store(state)
    assert migrate(fresh.read()) == SCHEMA_VERSION
    check_database(state)  # a valid (empty) database passes from now on


def test_migrations_run_in_order_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.read().execute("PRAGMA user_version").fetchone()[0] == 0
    assert migrate(store.read()) == SCHEMA_VERSION
    assert migrate(store.read()) == SCHEMA_VERSION
    assert store.read().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
