"""Stock git against our servers: partial clone, shallow clone and deepen, protocol v2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance, write_pattern

SERVERS = ["gunicorn", "cui serve"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("git-clients")
    repo = Repository.create(root / "DNS")
    source = tmp_path_factory.mktemp("git-clients-src")
    cvl = sample_appliance(source)
    publish(repo.path, cvl)
    write_pattern(source / "root.qcow2", 0x22, "2M", "64k")
    publish(repo.path, cvl)
    with running_server(root) as server, running_server(root, server="cui serve") as dev:
        yield {"gunicorn": server.url, "cui serve": dev.url}


def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env
    )


def commits(work: Path) -> int:
    return int(git("rev-list", "--count", "HEAD", cwd=work).stdout)


@pytest.mark.conformance("git", "clone --filter=blob:none ({server}): whole clone, files there")
@pytest.mark.parametrize("server", SERVERS)
def test_partial_clone_falls_back_to_a_whole_clone(served, server: str, tmp_path: Path) -> None:
    done = git("clone", "--filter=blob:none", f"{served[server]}/DNS.git", str(tmp_path / "w"))
    assert done.returncode == 0, done.stderr
    assert "filtering not recognized by server" in done.stderr
    assert (tmp_path / "w" / "DNS.cvl").read_text().startswith("CVL")
    assert git("fsck", "--strict", cwd=tmp_path / "w").returncode == 0


@pytest.mark.conformance("git", "clone --depth 1, then fetch --depth 2 ({server})")
@pytest.mark.parametrize("server", SERVERS)
def test_shallow_clone_and_deepen_by_depth(served, server: str, tmp_path: Path) -> None:
    work = tmp_path / "w"
    assert (
        git("clone", "-q", "--depth", "1", f"{served[server]}/DNS.git", str(work)).returncode == 0
    )
    assert commits(work) == 1
    assert git("fetch", "-q", "--depth", "2", cwd=work).returncode == 0
    assert commits(work) == 2


@pytest.mark.conformance("git", "fetch --deepen=1 ({server}): refused by git, not advertised")
@pytest.mark.parametrize("server", SERVERS)
def test_deepen_relative_is_not_advertised(served, server: str, tmp_path: Path) -> None:
    work = tmp_path / "w"
    assert (
        git("clone", "-q", "--depth", "1", f"{served[server]}/DNS.git", str(work)).returncode == 0
    )
    done = git("fetch", "--deepen=1", cwd=work)
    assert done.returncode != 0 and "does not support --deepen" in done.stderr
    assert commits(work) == 1


@pytest.mark.conformance("git", "clone with protocol.version=2 ({server}): served as v0")
@pytest.mark.parametrize("server", SERVERS)
def test_protocol_v2_client_clones(served, server: str, tmp_path: Path) -> None:
    work = tmp_path / "w"
    done = git("-c", "protocol.version=2", "clone", "-q", f"{served[server]}/DNS.git", str(work))
    assert done.returncode == 0, done.stderr
    tags = git("tag", cwd=work).stdout.split()
    assert tags == ["v1", "v2"]
