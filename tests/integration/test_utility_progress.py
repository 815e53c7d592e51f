"""`cui start` shows the disk download to the user: the daemon streams progress lines (NDJSON)
and `cui` renders them (a line per quarter when stderr is not a terminal). Real gunicorn
repository server, the daemon on its Unix socket, `cui` as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance, write_pattern
from tests.conftest import REPO_ROOT
from utility.adapters.simulation import simulated_host_uri

CUI = [sys.executable, "-m", "cui.main"]


def run_cui(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CUI, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        timeout=180,
    )


def test_start_streams_disk_progress_and_errors_to_cui(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "app", "DNS", size="64M", fill_bytes="24M"))
    with running_server(root, workers=2) as server:
        cvl = tmp_path / "user" / "MyDNS.cvl"
        cvl.parent.mkdir()
        cvl.write_text(
            f'import {{ url => "{server.url}/DNS", cvl => "DNS.cvl" }} DNS;\n'
            'MyDNS extends DNS { domain = "acme.org"; }\n'
        )
        state = tmp_path / "state"
        env = {"COLLECTIVE_UTILITY": f"unix://{state}/utility.sock"}
        log_path = tmp_path / "daemon.log"
        with log_path.open("w") as log:
            daemon = subprocess.Popen(
                [*CUI, "utility", "serve", "--state", str(state)],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while "listening on" not in log_path.read_text():
                assert daemon.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            for args in (
                (
                    "host",
                    "add",
                    "h1",
                    "--uri",
                    simulated_host_uri(tmp_path, "h1"),
                    "--memory",
                    "2G",
                    "--max-vms",
                    "4",
                ),
                ("vlan", "add", "100-101"),
            ):
                assert run_cui(*args, env=env).returncode == 0

            refused = run_cui("start", str(cvl), env=env)  # no public IPs: refused in-stream
            assert refused.returncode == 1
            assert "refused before anything started" in refused.stderr
            assert "public IP pool exhausted" in refused.stderr

            assert run_cui("publicip", "add", "192.0.2.1-192.0.2.2", env=env).returncode == 0
            done = run_cui("start", str(cvl), env=env)
            assert done.returncode == 0, done.stderr
            lines = [ln for ln in done.stderr.splitlines() if ln.startswith("fetching ")]
            assert lines and lines[-1].startswith("fetching (root) root.qcow2 (DNS v1): 100% of")
            assert "started " in done.stdout
            assert "fetching" not in log_path.read_text()  # shown to the user, not the daemon

            assert run_cui("stop", str(cvl), env=env).returncode == 0
            again = run_cui("start", str(cvl), "--json", env=env)  # cached now; JSON only
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout)["status"] == "running"
            assert "fetching" not in again.stderr

            write_pattern(tmp_path / "app" / "root.qcow2", 0x5A, "30M", "8M")
            publish(repo.path, tmp_path / "app" / "DNS.cvl")
            updated = run_cui("update", str(cvl), env=env)
            assert updated.returncode == 0, updated.stderr
            assert "fetching (root) root.qcow2 (DNS v2): 100% of" in updated.stderr
            assert "~ (root) (MyDNS v2) on h1 (from v1)" in updated.stdout
            assert "applied" in updated.stdout
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
