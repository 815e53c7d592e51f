"""LFS uploads wait in staging: a refused push leaves the object store unchanged and nothing
downloadable; the corrected push promotes the staged object without uploading it again.

Real git + git-lfs pushing to real gunicorn (reposerver.testing.running_server).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from reposerver import githooks
from reposerver.disks import chain
from reposerver.objects import ObjectStore
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import Server, running_server, sample_appliance, write_pattern

pytestmark = pytest.mark.slow
LFS_JSON = "application/vnd.git-lfs+json"


def git(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def start(
    tmp_path: Path, extra: dict[str, object] | None = None
) -> Iterator[tuple[Server, Repository]]:
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "app"))
    with running_server(root, workers=2, extra=extra) as server:
        yield server, repo


@pytest.fixture
def served(tmp_path: Path):
    yield from start(tmp_path)


def clone(server: Server, where: Path) -> Path:
    git("clone", "-q", server.url + "/DNS.git", str(where))
    git("config", "lfs.locksverify", "false", cwd=where)
    git("remote", "set-url", "--push", "origin", server.push_url("DNS"), cwd=where)
    return where


def store_listing(repo: Repository) -> list[str]:
    """Every path under lfs/objects with its size and mode: must not move on a refused push."""
    root = repo.path / "lfs" / "objects"
    return sorted(
        f"{p.relative_to(root)} {p.stat().st_size} {oct(p.stat().st_mode)}" for p in root.rglob("*")
    )


def disk_oid(work: Path) -> tuple[str, int]:
    pointer = git("show", "HEAD:root.qcow2", cwd=work).stdout
    oid = re.search(r"oid sha256:([0-9a-f]{64})", pointer)
    size = re.search(r"size (\d+)", pointer)
    assert oid and size, pointer
    return oid.group(1), int(size.group(1))


def batch(server: Server, operation: str, oid: str, size: int) -> dict:
    response = requests.post(
        f"{server.url}/DNS.git/info/lfs/objects/batch",
        json={"operation": operation, "objects": [{"oid": oid, "size": size}]},
        headers={"Accept": LFS_JSON, "Content-Type": LFS_JSON},
        auth=(server.user, server.token),
    )
    assert response.status_code == 200, response.text
    return response.json()["objects"][0]


def assert_not_served(server: Server, repo: Repository, oid: str, size: int) -> None:
    """The staged object is invisible to every download route, but waits in staging."""
    assert requests.get(f"{server.url}/DNS/objects/sha256/{oid}").status_code == 404
    assert requests.head(f"{server.url}/DNS/objects/sha256/{oid}").status_code == 404
    assert requests.get(f"{server.url}/DNS.git/info/lfs/objects/{oid}").status_code == 404
    assert batch(server, "download", oid, size)["error"]["code"] == 404
    assert (repo.path / "lfs" / "incoming" / oid[:2] / oid[2:4] / oid).is_file()
    upload = batch(server, "upload", oid, size)
    assert "actions" not in upload and "error" not in upload, upload


def push_traced(work: Path, *refs: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return git(
        "push",
        "origin",
        *refs,
        cwd=work,
        check=check,
        env={"GIT_CURL_VERBOSE": "1", "GIT_TRACE": "1"},
    )


def assert_promoted(server: Server, repo: Repository, oid: str, size: int) -> None:
    body = requests.get(f"{server.url}/DNS/objects/sha256/{oid}").content
    assert len(body) == size and hashlib.sha256(body).hexdigest() == oid
    lfs = requests.get(f"{server.url}/DNS.git/info/lfs/objects/{oid}").content
    assert hashlib.sha256(lfs).hexdigest() == oid
    assert "download" in batch(server, "download", oid, size)["actions"]
    assert not (repo.path / "lfs" / "incoming" / oid[:2] / oid[2:4] / oid).exists()
    stored = repo.store.path(oid)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o444
    fresh = Repository(repo.path)
    assert chain(fresh.store, oid)[-1] == oid


def test_broken_cvl_stages_and_the_fixed_push_promotes(served, tmp_path: Path) -> None:
    server, repo = served
    work = clone(server, tmp_path / "work")
    write_pattern(work / "root.qcow2", 0x44, "2M", "64k")
    cvl = work / "DNS.cvl"
    good = cvl.read_text()
    cvl.write_text(good.replace("extends", "extnds"))
    git("commit", "-q", "-am", "broken", cwd=work)
    git("tag", "-a", "v2", "-m", "v2", cwd=work)
    oid, size = disk_oid(work)
    before = store_listing(repo)
    first = push_traced(work, "main", "v2", check=False)
    assert first.returncode != 0 and "DNS.cvl does not check" in first.stderr
    assert f"PUT /DNS.git/info/lfs/objects/{oid}" in first.stderr, "git-lfs did upload it"
    assert store_listing(repo) == before
    assert_not_served(server, repo, oid, size)

    cvl.write_text(good)
    git("commit", "-q", "-am", "fixed", cwd=work)
    git("tag", "-f", "-a", "v2", "-m", "v2", cwd=work)
    second = push_traced(work, "main", "v2")
    assert "PUT /DNS.git/info/lfs/objects/" not in second.stderr, "re-uploaded a staged object"
    assert requests.get(server.url + "/DNS/").json()["latest"] == 2
    assert_promoted(server, repo, oid, size)
    assert oid in requests.get(server.url + "/DNS/versions/2/disks.json").text


def test_skipped_version_stages_and_the_right_number_promotes(served, tmp_path: Path) -> None:
    server, repo = served
    work = clone(server, tmp_path / "work")
    write_pattern(work / "root.qcow2", 0x55, "3M", "64k")
    git("commit", "-q", "-am", "candidate", cwd=work)
    git("tag", "-a", "v3", "-m", "v3", cwd=work)
    oid, size = disk_oid(work)
    before = store_listing(repo)
    first = push_traced(work, "main", "v3", check=False)
    assert first.returncode != 0 and "next version of this repository is v2" in first.stderr
    assert store_listing(repo) == before
    assert_not_served(server, repo, oid, size)

    git("tag", "-a", "v2", "-m", "v2", cwd=work)
    second = push_traced(work, "main", "v2")
    assert "PUT /DNS.git/info/lfs/objects/" not in second.stderr
    assert_promoted(server, repo, oid, size)


def test_stale_staged_objects_are_pruned_on_upload(tmp_path: Path) -> None:
    for server, repo in start(tmp_path, extra={"staging_ttl_seconds": 2}):
        staging = repo.path / "lfs" / "incoming"
        stale = os.urandom(4096)
        stale_oid = hashlib.sha256(stale).hexdigest()
        url = f"{server.url}/DNS.git/info/lfs/objects/"
        auth = (server.user, server.token)
        assert requests.put(url + stale_oid, data=stale, auth=auth).status_code == 200
        staged = staging / stale_oid[:2] / stale_oid[2:4] / stale_oid
        assert staged.is_file()
        aged = time.time() - 60  # older than the 2 s staging TTL, without waiting for it
        os.utime(staged, (aged, aged))
        fresh = os.urandom(4096)
        fresh_oid = hashlib.sha256(fresh).hexdigest()
        assert requests.put(url + fresh_oid, data=fresh, auth=auth).status_code == 200
        assert not (staging / stale_oid[:2] / stale_oid[2:4] / stale_oid).exists()
        assert (staging / fresh_oid[:2] / fresh_oid[2:4] / fresh_oid).is_file()
        assert "actions" in batch(server, "upload", stale_oid, len(stale))
        assert "actions" not in batch(server, "upload", fresh_oid, len(fresh))
        bad = requests.put(url + fresh_oid[::-1], data=fresh, auth=auth)
        assert bad.status_code in (400, 422) and "hashes to" in bad.text
        assert not (staging / fresh_oid[::-1][:2]).exists() or not any(
            (staging / fresh_oid[::-1][:2]).rglob(fresh_oid[::-1])
        )


def test_local_push_hook_promotes_an_object_staged_over_http(served, tmp_path: Path) -> None:
    """An object uploaded over HTTP, then referenced by a push to the repository's path (git's
    own receive-pack and our pre-receive hook), is promoted before git writes the refs."""
    server, repo = served
    work = clone(server, tmp_path / "work")
    write_pattern(work / "root.qcow2", 0x66, "4M", "64k")
    git("commit", "-q", "-am", "candidate", cwd=work)
    git("tag", "-a", "v2", "-m", "v2", cwd=work)
    oid, size = disk_oid(work)
    local = work / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    upload = requests.put(
        f"{server.url}/DNS.git/info/lfs/objects/{oid}",
        data=local.read_bytes(),
        auth=(server.user, server.token),
    )
    assert upload.status_code == 200
    assert requests.get(f"{server.url}/DNS/objects/sha256/{oid}").status_code == 404
    result = git("push", str(repo.path), "main", "v2", cwd=work, env={"GIT_LFS_SKIP_PUSH": "1"})
    assert result.returncode == 0, result.stderr
    assert_promoted(server, repo, oid, size)


def test_pre_receive_refusal_promotes_nothing(served, tmp_path: Path) -> None:
    """githooks.pre_receive refusing a skipped number leaves the staged object staged."""
    server, repo = served
    staging = ObjectStore(repo.path / "lfs" / "incoming")
    data = os.urandom(1024)
    oid, _ = staging.put_stream(io.BytesIO(data))
    tag = repo.version_tags()[1].decode()
    status, message = githooks.pre_receive(repo.path, [f"{'0' * 40} {tag} refs/tags/v5\n"])
    assert status == 1 and "next version of this repository is v2" in message
    assert staging.has(oid) and not repo.store.has(oid)
