"""Fixtures of the hostile-push tests (item 1 disk chains, item 3 git objects): a real gunicorn
server with two repositories, stock git + git-lfs clones, and the state a refused push must
leave unchanged. Every fixture and helper here is named `hostile_push_*`."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import Server, running_server, sample_appliance


def hostile_push_git(
    *args: str, cwd: Path | None = None, check: bool = True, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run stock git (no prompts); raise with its output when `check` and it fails."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, input=stdin, capture_output=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}:\n{result.stdout!r}\n{result.stderr!r}")
    return result


@dataclass(frozen=True)
class HostilePushSite:
    """A served root with repositories DNS (one version) and Other (one version)."""

    server: Server
    repo: Repository
    other: Repository
    tmp: Path

    def clone(self, name: str = "work") -> Path:
        """A stock git + git-lfs clone of DNS whose push URL carries the publisher's token."""
        work = self.tmp / name
        hostile_push_git("clone", "-q", self.server.url + "/DNS.git", str(work))
        hostile_push_git("config", "lfs.locksverify", "false", cwd=work)
        hostile_push_git("remote", "set-url", "--push", "origin", self.server.push_url("DNS"),
                         cwd=work)  # fmt: skip
        return work

    def state(self) -> dict[str, object]:
        """What a refused push must not change: refs, git objects, LFS objects with hashes."""
        path = self.repo.path
        refs = hostile_push_git("for-each-ref", "--format=%(refname) %(objectname)", cwd=path)
        return {
            "refs": refs.stdout,
            "git": sorted(
                str(p.relative_to(path)) for p in (path / "objects").rglob("*") if p.is_file()
            ),
            "lfs": sorted(
                f"{p.relative_to(path)} {hashlib.sha256(p.read_bytes()).hexdigest()}"
                for p in (path / "lfs" / "objects").rglob("*")
                if p.is_file()
            ),
            "index": self.repo.latest(),
        }

    def assert_fsck_clean(self) -> None:
        """`git fsck --strict` of the bare repository reports nothing."""
        result = hostile_push_git("fsck", "--strict", "--no-progress", cwd=self.repo.path,
                                  check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert b"error" not in result.stderr and b"warning" not in result.stderr, result.stderr

    def push_refused(self, work: Path, *refs: str, message: str) -> str:
        """Push `refs`; assert git reports a refusal containing `message`; return stderr."""
        before = self.state()
        result = hostile_push_git("push", "origin", *refs, cwd=work, check=False)
        stderr = result.stderr.decode(errors="replace")
        assert result.returncode != 0, f"push accepted:\n{stderr}"
        assert message in stderr, stderr
        assert self.state() == before, "a refused push changed the repository"
        self.assert_fsck_clean()
        return stderr


@pytest.fixture
def hostile_push_site(tmp_path: Path) -> Iterator[HostilePushSite]:
    """Real gunicorn serving DNS and Other, each with a version published by `cui publish`."""
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "app"))
    other = Repository.create(root / "Other")
    publish(other.path, sample_appliance(tmp_path / "other-app", fill=0x77))
    with running_server(root, workers=2) as server:
        site = HostilePushSite(server, repo, other, tmp_path)
        site.assert_fsck_clean()
        yield site
