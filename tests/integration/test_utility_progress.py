"""`cui start` shows the disk download to the user: the daemon streams progress lines (NDJSON)
and `cui` renders them (a line per quarter when stderr is not a terminal). Real gunicorn
repository server, the daemon on its Unix socket, `cui` as a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from reposerver.publish import publish
from tests.daemons import UtilityDaemon, published_sample, run_cui, running_server, write_pattern


def test_start_streams_disk_progress_and_errors_to_cui(tmp_path: Path) -> None:
    root = tmp_path / "root"
    repo = published_sample(root, tmp_path / "app", size="64M", fill_bytes="24M")
    with running_server(root, workers=2) as server:
        cvl = tmp_path / "user" / "MyDNS.cvl"
        cvl.parent.mkdir()
        cvl.write_text(
            f'import {{ url => "{server.url}/DNS", cvl => "DNS.cvl" }} DNS;\n'
            'MyDNS extends DNS { domain = "acme.org"; }\n'
        )
        with UtilityDaemon(tmp_path / "state") as daemon:
            env = daemon.env
            daemon.provision(tmp_path, vlans="100-101")

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
            assert "fetching" not in daemon.output()  # shown to the user, not the daemon

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
