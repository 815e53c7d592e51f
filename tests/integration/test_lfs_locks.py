"""The Git LFS locking API with stock git-lfs: lock, list, verify on push, unlock."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import requests

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance, write_pattern

pytestmark = pytest.mark.slow


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.fixture
def work(tmp_path: Path):
    root = tmp_path / "root"
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "app"))
    with running_server(root) as server:
        where = tmp_path / "w"
        assert git("clone", "-q", f"{server.url}/DNS.git", str(where), cwd=tmp_path).returncode == 0
        push = server.push_url("DNS")
        git("remote", "set-url", "origin", push, cwd=where)
        git("config", "lfs.url", push + "/info/lfs", cwd=where)
        yield server, repo, where


@pytest.mark.conformance("git-lfs", "lock, locks, push (lock verification on), unlock")
def test_stock_git_lfs_locks_and_pushes_without_warnings(work) -> None:
    server, repo, where = work
    locked = git("lfs", "lock", "root.qcow2", "--json", cwd=where)
    assert locked.returncode == 0, locked.stderr
    [lock] = json.loads(locked.stdout)
    assert lock["path"] == "root.qcow2" and lock["owner"]["name"] == "publisher"
    listed = json.loads(git("lfs", "locks", "--json", cwd=where).stdout)
    assert [entry["id"] for entry in listed] == [lock["id"]]
    again = git("lfs", "lock", "root.qcow2", cwd=where)
    assert again.returncode != 0 and "already locked" in again.stderr
    write_pattern(where / "root.qcow2", 0x33, "1M", "64k")
    git("commit", "-qam", "v2", cwd=where)
    git("tag", "-a", "v2", "-m", "v2", cwd=where)
    pushed = git("push", "origin", "main", "v2", cwd=where)
    assert pushed.returncode == 0, pushed.stderr
    assert "locking" not in pushed.stderr.lower(), pushed.stderr
    assert repo.latest() == 2
    assert git("lfs", "unlock", "root.qcow2", cwd=where).returncode == 0
    assert json.loads(git("lfs", "locks", "--json", cwd=where).stdout) == []


def test_locks_need_write_credentials_and_belong_to_their_owner(work) -> None:
    server, repo, where = work
    api = f"{server.url}/DNS.git/info/lfs/locks"
    anonymous = requests.post(api, json={"path": "root.qcow2"}, timeout=10)
    assert anonymous.status_code == 401 and not (repo.path / "lfs" / "locks.json").exists()
    auth = (server.user, server.token)
    made = requests.post(api, json={"path": "root.qcow2"}, auth=auth, timeout=10)
    assert made.status_code == 201
    lock_id = made.json()["lock"]["id"]
    for bad in ({"path": "../../etc/passwd"}, {"path": 7}, [1]):
        refused = requests.post(api, json=bad, auth=auth, timeout=10)
        assert refused.status_code == 400
    unknown = requests.post(f"{api}/nope/unlock", json={}, auth=auth, timeout=10)
    assert unknown.status_code == 404
    listed = requests.get(api, timeout=10).json()["locks"]
    assert [lock["id"] for lock in listed] == [lock_id]
    gone = requests.post(f"{api}/{lock_id}/unlock", json={"force": "yes"}, auth=auth, timeout=10)
    assert gone.status_code == 400 and requests.get(api, timeout=10).json()["locks"] == listed
