"""Automatic update on publish, end to end: a repository with the utility as subscriber,
the utility daemon on TCP with a bearer token, simulated hosts.

Publishing DNS v2 leads, with no other action, to DNS running v2: the other component
untouched, DNS's data disk the same file with the same bytes, history showing the push. A forged
event changes nothing. Shown twice: with the repository's own publish (local repository), and
with a stock `git push` (git-lfs) to the repository server under gunicorn.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from reposerver.publish import publish
from reposerver.repo_config import RepoConfig, Subscriber
from reposerver.repository import Repository
from reposerver.testing import sample_appliance, write_pattern
from tests.conftest import free_port
from tests.daemons import UtilityDaemon, cui, running_server
from utility.adapters.simulation import base_image, publisher_domain_xml

LOOPBACK_SUBSCRIBERS = {"allowed_subscriber_networks": ["127.0.0.0/8"]}
"""The utility listens on loopback here; the server refuses that unless its config allows it."""


@pytest.fixture(autouse=True)
def _loopback_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local publish announces under the server config named in the environment."""
    config = tmp_path / "server-config.json"
    config.write_text(json.dumps(LOOPBACK_SUBSCRIBERS))
    monkeypatch.setenv("COLLECTIVE_REPOSERVER_CONFIG", str(config))


def post_event(url: str, body: bytes, signature: str) -> int:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Collective-Signature": signature},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_publish_event_updates_just_the_tracking_component(tmp_path: Path) -> None:
    port = free_port()
    events_url = f"http://127.0.0.1:{port}/v1/events/publish"
    shared = secrets.token_hex(16)
    dns_repo = Repository.create(
        tmp_path / "repos" / "DNS", RepoConfig(subscribers=(Subscriber(events_url, secret=shared),))
    )
    src = tmp_path / "src"
    dns_cvl = sample_appliance(src, "DNS")
    publish(dns_repo.path, dns_cvl)
    ldap = tmp_path / "ldap"
    ldap.mkdir()
    (ldap / "LDAP.cvl").write_text('LDAP extends VMAppliance { vm = "l.vmx"; requires = "DNS"; }')
    (ldap / "l.vmx").write_text(publisher_domain_xml("ldap", 64))
    base_image(ldap / "system.qcow2")
    user = tmp_path / "user"
    user.mkdir()
    cvl = user / "Office.cvl"
    cvl.write_text(
        f'import {{ url => "file:{dns_repo.path}", cvl => "DNS.cvl" }} DNS;\n'
        f'import {{ url => "file:{ldap}", cvl => "LDAP.cvl" }} LDAP;\n'
        'Office extends VANAppliance {\n  DNS d;\n  LDAP l;\n  d.domain = "acme.org";\n'
        '  vanIF = "l.ethernet0";\n}\n'
    )

    with UtilityDaemon(
        tmp_path / "state", tcp=True, port=port, env={"COLLECTIVE_EVENTS_SECRET": shared}
    ) as daemon:
        env = daemon.env
        daemon.provision(tmp_path, vlans="100-101", public_ips="192.0.2.1-192.0.2.2")
        cui("start", str(cvl), env=env)

        def status() -> dict[str, dict]:
            vap = json.loads(cui("status", str(cvl), "--json", env=env))[0]
            return {c["path"]: c for c in vap["components"]}

        before = status()
        assert before["d"]["version"] == "1"
        vap_id = json.loads(cui("status", str(cvl), "--json", env=env))[0]["id"]
        data = tmp_path / "state" / "vaps" / str(vap_id) / "d" / "data-vdb.qcow2"  # utility's
        data_stat, data_bytes = data.stat().st_ino, hashlib.sha256(data.read_bytes()).digest()

        forged = json.dumps(
            {
                "repository": dns_repo.path.as_uri(),
                "version": 2,
                "tag": "v2",
                "commit": "0" * 40,
                "signer": None,
            }
        ).encode()
        assert post_event(events_url, forged, "sha256=" + "0" * 64) == 401
        assert post_event(events_url, forged, "") == 401
        # refused before anything was scheduled (the 401 is the daemon's answer, not a guess):
        assert status()["d"]["version"] == "1"
        assert json.loads(cui("history", str(cvl), "--json", env=env)) == []

        write_pattern(src / "root.qcow2", 0x42, "2M", "64k")
        publish(dns_repo.path, dns_cvl)
        published = time.monotonic()
        while status()["d"]["version"] != "2":
            assert time.monotonic() - published < 5, daemon.output()
            time.sleep(0.2)
        after = status()
        assert after["l"]["started"] == before["l"]["started"]  # untouched
        assert after["d"]["started"] != before["d"]["started"]
        assert after["d"]["interfaces"] == before["d"]["interfaces"]
        assert data.stat().st_ino == data_stat
        assert hashlib.sha256(data.read_bytes()).digest() == data_bytes
        history = json.loads(cui("history", str(cvl), "--json", env=env))
        assert [(h["trigger"], h["versions"], h["result"]) for h in history] == [
            ("push", {"d": ["1", "2"]}, "applied")
        ]


def test_git_push_to_the_server_updates_the_running_appliance(tmp_path: Path) -> None:
    def git(*args: str, cwd: Path) -> None:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        assert done.returncode == 0, done.stderr

    port = free_port()
    shared = secrets.token_hex(16)
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.create(
        root / "DNS",
        RepoConfig(
            subscribers=(Subscriber(f"http://127.0.0.1:{port}/v1/events/publish", secret=shared),)
        ),
    )
    publish(repo.path, sample_appliance(tmp_path / "app", "DNS"))
    with running_server(root, workers=2, extra=LOOPBACK_SUBSCRIBERS) as server:
        user = tmp_path / "user"
        user.mkdir()
        cvl = user / "MyDNS.cvl"
        cvl.write_text(
            f'import {{ url => "{server.url}/DNS", cvl => "DNS.cvl" }} DNS;\n'
            'MyDNS extends DNS { domain = "acme.org"; }\n'
        )
        with UtilityDaemon(
            tmp_path / "state", tcp=True, port=port, env={"COLLECTIVE_EVENTS_SECRET": shared}
        ) as daemon:
            env = daemon.env
            daemon.provision(tmp_path, vlans="100-101", public_ips="192.0.2.1-192.0.2.2")
            cui("start", str(cvl), env=env)

            def version() -> str:
                vap = json.loads(cui("status", str(cvl), "--json", env=env))[0]
                return str(vap["components"][0]["version"])

            assert version() == "1"
            work = tmp_path / "work"
            git("clone", "-q", server.url + "/DNS.git", str(work), cwd=tmp_path)
            git("config", "lfs.locksverify", "false", cwd=work)
            git("remote", "set-url", "--push", "origin", server.push_url("DNS"), cwd=work)
            write_pattern(work / "root.qcow2", 0x22, "2M", "64k")
            git("commit", "-q", "-am", "v2", cwd=work)
            git("tag", "-a", "v2", "-m", "version 2", cwd=work)
            git("push", "-q", "origin", "main", "v2", cwd=work)
            pushed = time.monotonic()
            while version() != "2":
                assert time.monotonic() - pushed < 5, daemon.output()
                time.sleep(0.2)
            history = json.loads(cui("history", str(cvl), "--json", env=env))
            assert [(h["trigger"], h["versions"]) for h in history] == [("push", {"": ["1", "2"]})]
