"""Shared fixtures: each test runs with its own HOME and temp dir; nothing leaks between tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conformance import pytest_runtest_makereport  # noqa: F401 - the hook

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "artifacts"


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Give each test a fresh HOME (git, gpg, ssh and cui config all live under it)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GNUPGHOME", str(home / ".gnupg"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Publisher")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "publisher@example.org")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Publisher")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "publisher@example.org")
    monkeypatch.delenv("COLLECTIVE_UTILITY", raising=False)
    (home / ".gnupg").mkdir(mode=0o700)
    return home


@pytest.fixture
def artifacts_dir() -> Path:
    """Directory for test artifacts (screenshots, logs) kept after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")
