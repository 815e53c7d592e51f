"""`cui utility subscribe URL` end to end: real gunicorn repository server, the utility daemon on
TCP, stock git. Subscribing registers the daemon's events endpoint with a secret the daemon made;
a push then updates the running appliance; unsubscribing stops that; bad credentials are 401."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import requests

from reposerver.repository import Repository
from tests.conftest import free_port
from tests.daemons import (
    UtilityDaemon,
    cui,
    published_sample,
    run_cui,
    running_server,
    write_pattern,
)


def git(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    assert done.returncode == 0, done.stderr


def test_subscribe_push_update_unsubscribe(tmp_path: Path) -> None:
    root = tmp_path / "root"
    repo = published_sample(root, tmp_path / "app")
    port = free_port()
    # The utility listens on loopback, which the server refuses unless its config allows it.
    loopback = {"allowed_subscriber_networks": ["127.0.0.0/8"]}
    with running_server(root, workers=2, extra=loopback) as server:
        repo_url = f"{server.url}/DNS"
        user = tmp_path / "user"
        user.mkdir()
        cvl = user / "MyDNS.cvl"
        cvl.write_text(
            f'import {{ url => "{repo_url}", cvl => "DNS.cvl" }} DNS;\n'
            'MyDNS extends DNS { domain = "acme.org"; }\n'
        )
        state = tmp_path / "state"
        with UtilityDaemon(state, tcp=True, port=port) as daemon:
            env = daemon.env
            daemon.provision(tmp_path, vlans="100-101", public_ips="192.0.2.1-192.0.2.2")
            cui("start", str(cvl), env=env)

            # bad credentials: refused by the server (401), nothing stored anywhere
            assert (
                requests.post(
                    f"{repo_url}/subscribers", json={"url": "http://x/"}, timeout=10
                ).status_code
                == 401
            )
            bad = run_cui(
                "utility",
                "subscribe",
                repo_url,
                "--user",
                server.user,
                env={**env, "COLLECTIVE_REPO_TOKEN": "wrong-token"},
            )
            assert bad.returncode == 1 and "HTTP 401" in bad.stderr, bad.stderr
            assert json.loads(cui("utility", "subscriptions", "--json", env=env)) == []
            assert Repository(repo.path).config.subscribers == ()

            out = cui(
                "utility",
                "subscribe",
                repo_url,
                "--user",
                server.user,
                env={**env, "COLLECTIVE_REPO_TOKEN": server.token},
            )
            assert f"events go to http://127.0.0.1:{port}/v1/events/publish" in out
            subs = Repository(repo.path).config.subscribers
            assert [s.url for s in subs] == [f"http://127.0.0.1:{port}/v1/events/publish"]
            secret = subs[0].resolve_secret().decode()
            assert stat.S_IMODE(os.stat(subs[0].secret_file or "").st_mode) == 0o600
            mine = state / "subscriptions.json"
            assert stat.S_IMODE(mine.stat().st_mode) == 0o600
            assert json.loads(mine.read_text())[repo_url]["secret"] == secret
            assert secret not in (repo.path / "collective.json").read_text()
            assert secret not in out and secret not in daemon.output()

            def version() -> str:
                vap = json.loads(cui("status", str(cvl), "--json", env=env))[0]
                return str(vap["components"][0]["version"])

            assert version() == "1"
            work = tmp_path / "work"
            git("clone", "-q", server.url + "/DNS.git", str(work), cwd=tmp_path)
            git("config", "lfs.locksverify", "false", cwd=work)
            git("remote", "set-url", "--push", "origin", server.push_url("DNS"), cwd=work)

            def push(n: int) -> float:
                write_pattern(work / "root.qcow2", 0x20 + n, "2M", "64k")
                git("commit", "-q", "-am", f"v{n}", cwd=work)
                git("tag", "-a", f"v{n}", "-m", f"version {n}", cwd=work)
                git("push", "-q", "origin", "main", f"v{n}", cwd=work)
                return time.monotonic()

            pushed = push(2)
            while version() != "2":
                assert time.monotonic() - pushed < 5, daemon.output()
                time.sleep(0.2)
            history = json.loads(cui("history", str(cvl), "--json", env=env))
            assert [(h["trigger"], h["versions"]) for h in history] == [("push", {"": ["1", "2"]})]

            cui(
                "utility",
                "unsubscribe",
                repo_url,
                "--user",
                server.user,
                env={**env, "COLLECTIVE_REPO_TOKEN": server.token},
            )
            assert Repository(repo.path).config.subscribers == ()
            assert not Path(subs[0].secret_file or "").exists()
            assert json.loads(mine.read_text()) == {}
            push(3)
            # the push found no subscriber, so it announced nothing: no delivery was even tried
            deliveries = repo.path / "logs" / "deliveries.log"
            assert all(
                json.loads(r).get("version") != 3 for r in deliveries.read_text().splitlines()
            )
            assert version() == "2"
            assert len(json.loads(cui("history", str(cvl), "--json", env=env))) == 1
