"""Shared test fixtures: a running utility daemon, the `cui` command, a repository server and a
published sample appliance (the last two from `reposerver.testing`), instead of copies per file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import Server, running_server, sample_appliance, write_pattern
from tests.conftest import REPO_ROOT, free_port
from utility.adapters.simulation import simulated_host_uri

__all__ = [
    "CUI",
    "Server",
    "UtilityDaemon",
    "cui",
    "published_sample",
    "run_cui",
    "running_server",
    "sample_appliance",
    "write_pattern",
]

CUI = [sys.executable, "-m", "cui.main"]
READY_TIMEOUT = 30.0


def run_cui(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    ok: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """`cui ARGS` from the repository root with `env` added to ours (must succeed with `ok`)."""
    done = subprocess.run(
        [*CUI, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        input=stdin,
        timeout=timeout,
    )
    if ok:
        assert done.returncode == 0, f"cui {' '.join(args)}: {done.stderr}"
    return done


def cui(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    """`cui ARGS`, which must succeed; its standard output."""
    return run_cui(*args, env=env, stdin=stdin, ok=True).stdout


class UtilityDaemon:
    """A `cui utility serve` subprocess on a state directory, up when the constructor returns.

    Args:
        state: the state directory.
        extra: more `serve` options (`--prefix`, `--ready-timeout`, ...).
        tcp: listen on 127.0.0.1 with an administrator token (else on the Unix socket).
        port: the TCP port (a free one when None).
        env: environment for the daemon (e.g. `COLLECTIVE_EVENTS_SECRET`); None: ours without
            `COLLECTIVE_EVENTS_SECRET`.
    """

    def __init__(
        self,
        state: Path,
        *extra: str,
        tcp: bool = False,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.state = state
        self.socket = state / "utility.sock"
        self.token = ""
        listen: list[str] = []
        if tcp:
            self.port = port or free_port()
            self.token = cui(
                "utility", "token", "add", "admin", "--role", "admin", "--state", str(state)
            ).strip()
            listen = ["--listen", f"127.0.0.1:{self.port}"]
        self.url = f"http://127.0.0.1:{self.port}" if tcp else f"unix://{self.socket}"
        base = {k: v for k, v in os.environ.items() if k != "COLLECTIVE_EVENTS_SECRET"}
        self.log_path = state.parent / f"daemon-{state.name}-{time.monotonic_ns()}.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [*CUI, "utility", "serve", "--state", str(state), *listen, *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**base, **(env or {})},
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while "listening on" not in self.output():
            assert self.proc.poll() is None, "daemon exited: " + self.output()
            assert time.monotonic() < deadline, "daemon did not come up: " + self.output()
            time.sleep(0.1)

    @property
    def env(self) -> dict[str, str]:
        """What `cui` needs to talk to this daemon."""
        env = {"COLLECTIVE_UTILITY": self.url}
        return {**env, "COLLECTIVE_TOKEN": self.token} if self.token else env

    def cui(self, *args: str) -> str:
        """`cui ARGS` against this daemon; must succeed."""
        return cui(*args, env=self.env)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A JSON API call over TCP as the administrator; must succeed."""
        answer = requests.request(
            method,
            self.url + path,
            json=body,
            timeout=120,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert answer.status_code < 300, answer.text
        return answer.json()

    def provision(
        self, directory: Path, *, vlans: str = "100-101", public_ips: str = "", max_vms: int = 8
    ) -> None:
        """One simulated host (`test:` driver) and the pools, through `cui`."""
        uri = simulated_host_uri(directory, f"h1-{directory.name}")
        self.cui("host", "add", "h1", "--uri", uri, "--memory", "2G", "--max-vms", str(max_vms))
        self.cui("vlan", "add", vlans)
        if public_ips:
            self.cui("publicip", "add", public_ips)

    def output(self) -> str:
        """Everything the daemon wrote so far."""
        return self.log_path.read_text()

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` and wait for the daemon to exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def __enter__(self) -> UtilityDaemon:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def published_sample(root: Path, work: Path, name: str = "DNS", **sample: Any) -> Repository:
    """A repository `root/name` with version 1 of the sample appliance (`sample_appliance`)."""
    root.mkdir(parents=True, exist_ok=True)
    repo = Repository.create(root / name)
    publish(repo.path, sample_appliance(work, name, **sample))
    return repo
