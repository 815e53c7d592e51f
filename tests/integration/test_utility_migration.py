"""State made by the old layout (VAPs keyed by CVL path) against a real `cui utility serve`.

With an active VAP of the old layout the daemon refuses to start, naming it and the way out;
once it is stopped the daemon migrates the database (schema version 4) and lists it by name.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.daemons import CUI, run_cui
from tests.daemons import UtilityDaemon as Daemon
from utility.adapters.db_check import SCHEMA_VERSION

OLD = """
CREATE TABLE vaps (id INTEGER PRIMARY KEY AUTOINCREMENT, cvl_path TEXT NOT NULL,
  owner TEXT NOT NULL, status TEXT NOT NULL, state_json TEXT, error TEXT, updated REAL NOT NULL);
CREATE UNIQUE INDEX vaps_active ON vaps (cvl_path)
  WHERE status IN ('starting', 'running', 'stopping', 'updating');
CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
  cvl_path TEXT NOT NULL, trigger TEXT NOT NULL, actions TEXT NOT NULL, versions TEXT NOT NULL,
  result TEXT NOT NULL);
CREATE TABLE failed_versions (cvl_path TEXT NOT NULL, url TEXT NOT NULL,
  version TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (cvl_path, url, version));
INSERT INTO vaps (cvl_path, owner, status, updated)
  VALUES ('/home/a/web.cvl', 'local', 'running', 0), ('/home/b/db.cvl', 'bob', 'stopped', 0);
INSERT INTO history (at, cvl_path, trigger, actions, versions, result)
  VALUES (0, '/home/a/web.cvl', 'user', '[]', '{}', 'applied');
PRAGMA user_version = 3;
"""


def _serve(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CUI, "utility", "serve", "--state", str(state)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )


def test_the_old_layout_is_refused_while_active_then_migrated(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o711)
    db = sqlite3.connect(state / "utility.sqlite3")
    db.executescript(OLD)
    db.close()

    refused = _serve(state)
    assert refused.returncode != 0
    assert "/home/a/web.cvl" in refused.stderr and "old layout" in refused.stderr
    assert "cui stop PATH" in refused.stderr and "Migration" in refused.stderr
    assert not (state / "utility.sock").exists()  # refused before listening
    db = sqlite3.connect(state / "utility.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3  # untouched
    db.execute("UPDATE vaps SET status='stopped'")  # stopped with the previous version
    db.commit()
    db.close()

    daemon = Daemon(state)
    try:
        listed = json.loads(daemon.cui("status", "--json"))
        assert [(v["vap"], v["status"]) for v in listed] == [
            ("local/web", "stopped"),
            ("bob/db", "stopped"),
        ]
        assert [h["name"] for h in json.loads(daemon.cui("history", "--json"))] == ["local/web"]
        shown = run_cui("show", "web", env=daemon.env)
        assert shown.returncode == 1 and "cui update NAME FILE.cvl" in shown.stderr
    finally:
        daemon.kill()
    db = sqlite3.connect(state / "utility.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
