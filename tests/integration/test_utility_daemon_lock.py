"""One daemon per state directory, and a refused start on a lost database (real subprocesses).

A second `cui utility serve` on a running daemon's `--state` exits non-zero naming the first's PID
and leaves its socket, its VAP and its allocations alone. A database deleted where a VAP ran is
refused with the file to restore and `--reinitialise`; never an empty start handing out the
running VAP's VLANs and addresses again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.daemons import CUI, run_cui
from tests.daemons import UtilityDaemon as Daemon
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.client.daemon_client import UtilityClient

PAPER = REPO_ROOT / "examples" / "paper"


def cui(
    *args: str, env: dict[str, str] | None = None, ok: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`cui ARGS` (must succeed unless `ok` is False)."""
    return run_cui(*args, env=env, ok=ok, stdin=stdin)


def _serve(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CUI, "utility", "serve", "--state", str(state), *extra],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )


def test_second_daemon_is_refused_and_first_keeps_its_socket_and_vap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    first = Daemon(state)
    try:
        monkeypatch.setenv("COLLECTIVE_UTILITY", f"unix://{first.socket}")
        uri = simulated_host_uri(tmp_path, "h1")
        cui("host", "add", "h1", "--uri", uri, "--memory", "1G", "--max-vms", "8")
        cui("vlan", "add", "100-103")
        cui("publicip", "add", "192.0.2.10-192.0.2.12")
        acme = paper_tree(PAPER, tmp_path / "acme")
        cui("start", str(acme))
        assert (state / "vaps-existed").exists()
        client = UtilityClient(f"unix://{first.socket}")
        pools, hosts = client.pools(), client.hosts()
        socket_before = first.socket.stat()
        second = _serve(state)
        assert second.returncode != 0
        assert f"PID {first.proc.pid}" in second.stderr, second.stderr
        assert first.proc.poll() is None
        after = first.socket.stat()
        assert (after.st_ino, after.st_mtime_ns) == (
            socket_before.st_ino,
            socket_before.st_mtime_ns,
        )
        status = json.loads(cui("status", str(acme), "--json").stdout)[0]
        assert status["status"] == "running"
        assert (client.pools(), client.hosts()) == (pools, hosts)
    finally:
        first.kill()


def test_lost_database_where_a_vap_ran_is_refused_with_the_recovery(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Daemon(state).kill()
    (state / "vaps-existed").write_text("a VAP ran here\n")
    for suffix in ("", "-wal", "-shm"):
        (state / f"utility.sqlite3{suffix}").unlink(missing_ok=True)
    (state / "utility.sock").unlink(missing_ok=True)
    refused = _serve(state)
    assert refused.returncode != 0
    assert "utility.sqlite3" in refused.stderr and "--reinitialise" in refused.stderr
    assert not (state / "utility.sqlite3").exists()
    assert not (state / "utility.sock").exists()  # refused before listening
    again = Daemon(state, "--reinitialise")
    try:
        assert again.proc.poll() is None
    finally:
        again.kill()
    Daemon(state).kill()  # the reinitialised database is valid from now on


def test_sigkill_of_the_daemon_ends_its_worker_and_frees_the_lock(tmp_path: Path) -> None:
    from tests.integration.test_utility_tls import children

    state = tmp_path / "state"
    first = Daemon(state)
    workers = children(first.proc.pid)
    assert len(workers) == 1
    first.kill(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{workers[0]}").exists():
        try:
            stat = Path(f"/proc/{workers[0]}/stat").read_text()
        except OSError:
            break
        if stat.rpartition(")")[2].split()[0] == "Z":
            break  # dead, waiting to be reaped by init
        assert time.monotonic() < deadline, "the worker outlived its master"
        time.sleep(0.05)
    second = Daemon(state)  # the lock went with them
    second.kill()
