"""Publishing with stock git + git-lfs through real gunicorn: accepted pushes and every refusal."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
import requests

from reposerver.disks import chain
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import Server, running_server, sample_appliance, write_pattern

pytestmark = pytest.mark.slow


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


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "app"))
    with running_server(root) as server:
        yield server, repo


def clone(server: Server, where: Path) -> Path:
    git("clone", "-q", server.url + "/DNS.git", str(where))
    git("config", "lfs.locksverify", "false", cwd=where)
    git("remote", "set-url", "--push", "origin", server.push_url("DNS"), cwd=where)
    return where


def state(server: Server, repo: Repository) -> tuple[str, str, list[str], list[str]]:
    """What a refused push must not change: refs, the JSON index, the git and LFS stores."""
    refs = git("ls-remote", server.url + "/DNS.git").stdout
    index = requests.get(server.url + "/DNS/").text
    objects = sorted(str(p.relative_to(repo.path)) for p in (repo.path / "objects").rglob("*"))
    lfs = sorted(
        f"{p.relative_to(repo.path)} {p.stat().st_size}"
        for p in (repo.path / "lfs" / "objects").rglob("*")
    )
    return refs, index, objects, lfs


def new_version(work: Path, tag: str, change: int = 0x22, annotated: bool = True) -> None:
    write_pattern(work / "root.qcow2", change, "2M", "64k")
    git("commit", "-q", "-am", f"change for {tag}", cwd=work)
    if annotated:
        git("tag", "-a", tag, "-m", f"version {tag}", cwd=work)
    else:
        git("tag", tag, cwd=work)


def test_clone_push_new_version_appears_in_json(served, tmp_path: Path) -> None:
    server, repo = served
    work = clone(server, tmp_path / "work")
    pointer = git("lfs", "ls-files", cwd=work).stdout
    assert "root.qcow2" in pointer
    assert (work / "root.qcow2").read_bytes()[:4] == b"QFI\xfb", "LFS smudge should give the image"
    new_version(work, "v2")
    pushed = git("push", "origin", "main", "v2", cwd=work)
    assert "v2" in pushed.stderr
    index = requests.get(server.url + "/DNS/").json()
    assert index["latest"] == 2
    assert [v["number"] for v in index["versions"]] == [1, 2]
    assert index["versions"][1]["commit"] == git("rev-parse", "HEAD", cwd=work).stdout.strip()
    disks = requests.get(server.url + "/DNS/versions/2/disks.json").json()
    assert disks[0]["name"] == "root.qcow2"
    assert chain(repo.store, disks[0]["sha256"])  # present and verified
    assert git("fsck", cwd=repo.path).returncode == 0


REFUSALS = {
    "same version again": (
        ["tag", "-f", "-a", "v1", "-m", "again"],
        ["push", "--force", "origin", "v1"],
        "versions are immutable",
    ),
    "tag deletion": (None, ["push", "origin", ":refs/tags/v1"], "versions are immutable"),
    "skipped number": (
        ["tag", "-a", "v3", "-m", "skip"],
        ["push", "origin", "main", "v3"],
        "next version of this repository is v2",
    ),
    "lightweight tag": (["tag", "v2"], ["push", "origin", "main", "v2"], "lightweight tag"),
    "other ref": (None, ["push", "origin", "HEAD:refs/notes/x"], "only refs/heads/*"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_pushes_change_nothing(served, tmp_path: Path, case: str) -> None:
    server, repo = served
    work = clone(server, tmp_path / "work")
    write_pattern(work / "root.qcow2", 0x33, "3M", "64k")
    git("commit", "-q", "-am", "candidate", cwd=work)
    tag_args, push_args, message = REFUSALS[case]
    if tag_args:
        git(*tag_args, cwd=work)
    before = state(server, repo)
    result = git(*push_args, cwd=work, check=False)
    assert result.returncode != 0, result.stderr
    assert message in result.stderr
    assert state(server, repo) == before


def test_force_moved_version_tag_refused(served, tmp_path: Path) -> None:
    server, repo = served
    work = clone(server, tmp_path / "work")
    new_version(work, "v2")
    git("push", "origin", "main", "v2", cwd=work)
    git("tag", "-f", "-a", "v2", "-m", "moved", "HEAD~1", cwd=work)
    before = state(server, repo)
    result = git("push", "--force", "origin", "v2", cwd=work, check=False)
    assert result.returncode != 0 and "v2 already exists" in result.stderr
    assert "versions are immutable" in result.stderr
    assert state(server, repo) == before


def test_broken_cvl_refused(served, tmp_path: Path) -> None:
    server, repo = served
    work = clone(server, tmp_path / "work")
    (work / "DNS.cvl").write_text((work / "DNS.cvl").read_text().replace("extends", "extnds"))
    git("commit", "-q", "-am", "broken", cwd=work)
    git("tag", "-a", "v2", "-m", "v2", cwd=work)
    before = state(server, repo)
    result = git("push", "origin", "main", "v2", cwd=work, check=False)
    assert result.returncode != 0 and "DNS.cvl does not check" in result.stderr
    assert "DNS.cvl:2" in result.stderr, "the refusal says where the CVL is wrong"
    assert state(server, repo) == before


def test_missing_lfs_object_refused(served, tmp_path: Path) -> None:
    server, repo = served
    work = clone(server, tmp_path / "work")
    new_version(work, "v2")
    before = state(server, repo)
    result = git(
        "push", "origin", "main", "v2", cwd=work, check=False, env={"GIT_LFS_SKIP_PUSH": "1"}
    )
    assert result.returncode != 0 and "is not on the server" in result.stderr
    assert state(server, repo) == before


def test_push_larger_than_one_mib_through_gunicorn(served, tmp_path: Path) -> None:
    server, repo = served
    work = clone(server, tmp_path / "work")
    (work / "payload.bin").write_bytes(os.urandom(3 << 20))
    git("add", "payload.bin", cwd=work)
    new_version(work, "v2")
    result = git("push", "origin", "main", "v2", cwd=work, env={"GIT_TRACE_CURL_NO_DATA": "1"})
    assert result.returncode == 0
    assert (
        requests.get(server.url + "/DNS/latest/payload.bin").content
        == (work / "payload.bin").read_bytes()
    )


def test_eight_concurrent_pushers_exactly_one_wins(served, tmp_path: Path) -> None:
    server, repo = served
    works = []
    for i in range(8):
        work = clone(server, tmp_path / f"work{i}")
        (work / "DNS.cvl").write_text((work / "DNS.cvl").read_text() + f"/* pusher {i} */\n")
        git("commit", "-q", "-am", f"pusher {i}", cwd=work)
        git("tag", "-a", "v2", "-m", f"v2 from pusher {i}", cwd=work)
        works.append(work)
    results: list[subprocess.CompletedProcess[str]] = [None] * 8  # type: ignore[list-item]
    barrier = threading.Barrier(8)

    def push(i: int) -> None:
        barrier.wait()
        results[i] = git("push", "origin", "v2", cwd=works[i], check=False)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in enumerate(results) if r.returncode == 0]
    assert len(winners) == 1, [r.stderr for r in results]
    for i, r in enumerate(results):
        if i not in winners:
            assert "versions are immutable" in r.stderr or "already exists" in r.stderr, r.stderr
    index = requests.get(server.url + "/DNS/").json()
    assert index["latest"] == 2
    winner_commit = git("rev-parse", "HEAD", cwd=works[winners[0]]).stdout.strip()
    assert index["versions"][1]["commit"] == winner_commit
    fsck = git("fsck", "--strict", cwd=repo.path, check=False)
    assert fsck.returncode == 0, fsck.stderr
    fresh = Repository(repo.path)
    for number in (1, 2):
        for disk in fresh.disks(number):
            assert [c["sha256"] for c in disk["chain"]] == chain(fresh.store, disk["sha256"])
    assert json.loads(requests.get(server.url + "/").text) == [{"name": "DNS", "latest": 2}]


def test_data_disk_in_a_push_is_refused(served, tmp_path: Path) -> None:
    server, repo = served
    work = clone(server, tmp_path / "work")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(work / "data.qcow2"), "1M"], check=True
    )
    git("add", "data.qcow2", cwd=work)
    git("commit", "-q", "-m", "with data disk", cwd=work)
    git("tag", "-a", "v2", "-m", "v2", cwd=work)
    before = state(server, repo)
    result = git("push", "origin", "main", "v2", cwd=work, check=False)
    assert result.returncode != 0 and "data disks are never stored" in result.stderr
    assert state(server, repo) == before


def test_cui_serve_development_server(tmp_path: Path) -> None:
    """`cui serve` (werkzeug) serves the same app: JSON, clone, and a chunked >1 MiB push."""
    import sys
    import time

    from reposerver.auth import token_digest
    from reposerver.testing import free_port

    root = tmp_path / "root"
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "app"))
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"users": {"dev": {"token_sha256": token_digest("devtoken")}}}))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cui.main",
            "serve",
            str(root),
            "--port",
            str(port),
            "--config",
            str(config),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                assert requests.get(url + "/", timeout=2).json() == [{"name": "DNS", "latest": 1}]
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        work = tmp_path / "work"
        git("clone", "-q", url + "/DNS.git", str(work))
        git("config", "lfs.locksverify", "false", cwd=work)
        (work / "payload.bin").write_bytes(os.urandom(2 << 20))
        git("add", "payload.bin", cwd=work)
        git("commit", "-q", "-m", "v2", cwd=work)
        git("tag", "-a", "v2", "-m", "v2", cwd=work)
        push_url = f"http://dev:devtoken@127.0.0.1:{port}/DNS.git"
        git("push", push_url, "main", "v2", cwd=work)
        assert requests.get(url + "/DNS/").json()["latest"] == 2
    finally:
        proc.terminate()
        proc.wait(10)


def test_git_publisher_pushes_a_delta_made_with_cui_delta(served, tmp_path: Path) -> None:
    """With `cui delta`, a version published by git push is stored as changed clusters only."""
    import shutil

    from click.testing import CliRunner

    from cui.main import cli
    from reposerver.client import open_repository

    server, repo = served
    work = clone(server, tmp_path / "work")
    image = tmp_path / "publisher-image.qcow2"
    shutil.copy(work / "root.qcow2", image)
    write_pattern(image, 0x99, "2M", "64k")
    made = CliRunner().invoke(
        cli, ["delta", str(work / "root.qcow2"), str(image), str(work / "root.qcow2")]
    )
    assert made.exit_code == 0, made.output
    git("commit", "-q", "-am", "v2 as a delta", cwd=work)
    git("tag", "-a", "v2", "-m", "v2", cwd=work)
    git("push", "origin", "main", "v2", cwd=work)
    chain_v1 = requests.get(server.url + "/DNS/versions/1/disks.json").json()[0]["chain"]
    disk = requests.get(server.url + "/DNS/versions/2/disks.json").json()[0]
    assert [c["sha256"] for c in disk["chain"][:-1]] == [c["sha256"] for c in chain_v1]
    assert disk["chain"][-1]["size"] < 300 * 1024, "only the changed clusters were pushed"
    top = open_repository(server.url + "/DNS").fetch_disk(2, "root.qcow2", tmp_path / "cache")
    same = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(image), str(top)],
        capture_output=True,
    )
    assert same.returncode == 0
    # A fresh checkout of v2 (an overlay): the checked-out file is a usable parent once the
    # whole chain is in .git/lfs/objects, and a clear instruction before that.
    again = clone(server, tmp_path / "again")
    image3 = tmp_path / "v3-image.qcow2"
    shutil.copy(image, image3)
    write_pattern(image3, 0x77, "3M", "64k")
    out = tmp_path / "v3.qcow2"
    early = CliRunner().invoke(cli, ["delta", str(again / "root.qcow2"), str(image3), str(out)])
    assert early.exit_code == 1 and "git lfs fetch --all" in early.output
    assert "qemu-img" not in early.output and not out.exists()
    git("lfs", "fetch", "--all", cwd=again)
    made = CliRunner().invoke(cli, ["delta", str(again / "root.qcow2"), str(image3), str(out)])
    assert made.exit_code == 0, made.output
    assert out.stat().st_size < 1024 * 1024
