"""Publish events: each version reaches a subscriber once, HMAC-signed; a dead one is harmless."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reposerver import events, repo_config
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import free_port, running_server, sample_appliance

pytestmark = pytest.mark.slow
SECRET = "s3cret-for-tests"


class Receiver:
    """A test HTTP endpoint recording every POST."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)


def delivery_marks(log: Path) -> set[tuple[str, int, object]]:
    """(url, version, "ok") per delivered event and (url, version, attempt) per attempt."""
    marks: set[tuple[str, int, object]] = set()
    for line in log.read_text().splitlines() if log.exists() else ():
        record = json.loads(line)
        if "version" in record:
            marks.add((record["url"], record["version"], record["attempt"]))
            if record["delivered"]:
                marks.add((record["url"], record["version"], "ok"))
    return marks


def test_subscriber_gets_each_version_once_and_dead_one_harms_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    receiver = Receiver()
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    monkeypatch.setenv("TEST_HOOK_SECRET", SECRET)
    # The receivers run on loopback, which the server refuses unless its administrator allows it.
    local_config = tmp_path / "server.json"
    local_config.write_text(json.dumps({"allowed_subscriber_networks": ["127.0.0.0/8"]}))
    monkeypatch.setenv("COLLECTIVE_REPOSERVER_CONFIG", str(local_config))
    repo = Repository.create(
        tmp_path / "root" / "DNS",
        repo_config.RepoConfig(
            subscribers=(repo_config.Subscriber(url=receiver.url, secret_env="TEST_HOOK_SECRET"),)
        ),
    )
    cvl = sample_appliance(tmp_path / "app")
    publish(repo.path, cvl)  # a local publish announces too
    extra = {
        "subscribers": [{"url": dead, "secret": "x"}],
        "delivery_delays": [0.2, 0.2],
        "public_url": None,  # events then name the URL the push came in on, if trusted
        "trusted_hosts": ["127.0.0.1"],
        "allowed_subscriber_networks": ["127.0.0.0/8"],
    }
    with running_server(repo.path.parent, extra=extra) as server:
        work = tmp_path / "work"
        subprocess.run(["git", "clone", "-q", server.url + "/DNS.git", str(work)], check=True)
        (work / "DNS.cvl").write_text((work / "DNS.cvl").read_text() + "/* v2 */\n")
        subprocess.run(["git", "commit", "-q", "-am", "v2"], cwd=work, check=True)
        subprocess.run(["git", "tag", "-a", "v2", "-m", "v2"], cwd=work, check=True)
        start = time.monotonic()
        subprocess.run(
            [
                "git",
                "-c",
                "lfs.locksverify=false",
                "push",
                "-q",
                server.push_url("DNS"),
                "main",
                "v2",
            ],
            cwd=work,
            check=True,
            capture_output=True,
        )
        assert time.monotonic() - start < 10, "a dead subscriber must not slow the push"
        receiver.wait_for(2)
        # every delivery process is done once its log shows each target's last attempt: the
        # receiver's success for v1 and v2, the dead one's third (final) try for v2
        finished = {(receiver.url, 1, "ok"), (receiver.url, 2, "ok"), (dead, 2, 3)}
        log = repo.path / "logs" / "deliveries.log"
        deadline = time.monotonic() + 20
        while not finished <= delivery_marks(log):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    events = [json.loads(body) for _, body in receiver.received]
    assert sorted(e["version"] for e in events) == [1, 2]
    for headers, body in receiver.received:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Collective-Signature"], expected)
    by_version = {e["version"]: e for e in events}
    assert by_version[2]["repository"] == f"{server.url}/DNS"
    assert by_version[2]["tag"] == "v2" and by_version[2]["signer"] is None
    assert by_version[2]["commit"] == repo.version(2).commit
    assert len({e["id"] for e in events}) == 2, "every event has its own id"
    assert all(abs(e["timestamp"] - time.time()) < 120 for e in events)
    log = [
        json.loads(line)
        for line in (repo.path / "logs" / "deliveries.log").read_text().splitlines()
    ]
    dead_attempts = [r for r in log if r["url"] == dead]
    assert [r["attempt"] for r in dead_attempts] == [1, 2, 3], "retried per delivery_delays"
    assert not any(r["delivered"] for r in dead_attempts)
    assert sum(1 for r in log if r["url"] == receiver.url and r["delivered"]) == 2
    receiver.server.shutdown()


def test_a_subscriber_that_keeps_refusing_is_suspended_shown_and_skipped(
    tmp_path: Path, monkeypatch
) -> None:
    """A loopback URL nobody listens on refuses every attempt: after `suspend_after` seconds of
    only failures (3 attempts at least) delivery stops, the listing says `suspended`, the next
    version is not sent to it at all, and subscribing again lifts the suspension."""
    from reposerver import create_app
    from reposerver.auth import token_digest

    refusing = f"http://127.0.0.1:{free_port()}/gone"
    config = tmp_path / "server.json"
    config.write_text(
        json.dumps(
            {"allowed_subscriber_networks": ["127.0.0.0/8"], "subscriber_suspend_after_seconds": 1}
        )
    )
    monkeypatch.setenv("COLLECTIVE_REPOSERVER_CONFIG", str(config))
    root = tmp_path / "root"
    repo = Repository.create(
        root / "DNS",
        repo_config.RepoConfig(subscribers=(repo_config.Subscriber(url=refusing, secret="x"),)),
    )
    log = repo.path / "logs" / "deliveries.log"
    publish(repo.path, sample_appliance(tmp_path / "app"))  # v1: delays 1, 2, 4, 8, 16 s

    def records() -> list[dict[str, object]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    deadline = time.monotonic() + 30
    while not any(r.get("suspended") for r in records()):
        assert time.monotonic() < deadline, records()
        time.sleep(0.1)
    attempts = [r for r in records() if r.get("version") == 1 and "attempt" in r]
    assert [r["attempt"] for r in attempts] == [1, 2, 3], attempts  # not 6: it stopped
    assert not any(r["delivered"] for r in attempts)

    app = create_app(
        {
            "root": str(root),
            "users": {"pub": {"token_sha256": token_digest("publisher-token")}},
            "allowed_subscriber_networks": ["127.0.0.0/8"],
        }
    )
    client = app.test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(b"pub:publisher-token").decode()}
    (listed,) = client.get("/DNS/subscribers", headers=auth).get_json()
    assert listed["url"] == refusing and listed["status"] == "suspended"
    assert listed["failures"] == 3 and "ConnectionRefusedError" in listed["last_error"]
    assert listed["suspended_at"] - listed["failing_since"] >= 1

    cvl = tmp_path / "app" / "DNS.cvl"
    cvl.write_text(cvl.read_text() + "/* v2 */\n")
    before = len(records())
    publish(repo.path, cvl)  # v2: the suspended subscriber is skipped when announcing
    (skipped,) = records()[before:]
    assert skipped == {**skipped, "url": refusing, "skipped": "suspended: it stopped answering"}
    started = events.announce(
        [events.event("file:///x", 2, "0" * 40, None)], repo.config.subscribers, log
    )
    assert started is None  # no delivery process at all for a suspended subscriber

    again = client.post("/DNS/subscribers", json={"url": refusing}, headers=auth)
    assert again.status_code == 201
    (listed,) = client.get("/DNS/subscribers", headers=auth).get_json()
    assert listed == {"url": refusing, "status": "active"}
