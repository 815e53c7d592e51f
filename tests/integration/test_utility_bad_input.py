"""No 500 on bad input: hostile requests against a real daemon over HTTP (issue 12 item 10).

A `cui utility serve --listen 127.0.0.1:PORT` subprocess with a host, pools and a running VAP.
Each row sends raw request bytes (so lone surrogates and huge integers arrive exactly as written)
and asserts the status (400, or 409 for a duplicate host URI), that the error names the field,
and that every table of the state database is unchanged.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, free_port
from tests.daemons import CUI, run_cui
from tests.daemons import UtilityDaemon as Daemon
from utility.adapters.simulation import paper_tree, simulated_host_uri

HOST = '{"name": "h2", "uri": "test:///default", "memory": "1G", "max_vms": 4, %s}'


PAPER = REPO_ROOT / "examples" / "paper"


def cui(
    *args: str, env: dict[str, str] | None = None, ok: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`cui ARGS` (must succeed unless `ok` is False)."""
    return run_cui(*args, env=env, ok=ok, stdin=stdin)


def host(extra: str) -> bytes:
    """An add-host body with `extra` overriding one field (later keys win in JSON objects)."""
    return (HOST % extra).encode()


CASES: list[tuple[str, str, str, bytes, int, str]] = [
    # kind, method, path, raw body, status, field named in the error
    ("huge integer", "POST", "/v1/hosts", host('"max_vms": ' + "9" * 40), 400, "max_vms"),
    ("huge memory", "POST", "/v1/hosts", host('"memory": ' + "9" * 40), 400, "memory"),
    ("negative memory", "POST", "/v1/hosts", host('"memory": -1'), 400, "memory"),
    ("zero memory", "POST", "/v1/hosts", host('"memory": 0'), 400, "memory"),
    ("zero memory text", "POST", "/v1/hosts", host('"memory": "0"'), 400, "memory"),
    ("boolean for integer", "POST", "/v1/hosts", host('"max_vms": true'), 400, "max_vms"),
    ("NUL in string", "POST", "/v1/hosts", host('"name": "h\\u0000x"'), 400, "name"),
    ("lone surrogate", "POST", "/v1/hosts", host('"uri": "test:///\\ud800"'), 400, "uri"),
    ("non-string URI", "POST", "/v1/hosts", host('"uri": ["test:///default"]'), 400, "uri"),
    ("non-string URL", "POST", "/v1/blacklist", b'{"url": 5, "version": "1"}', 400, "url"),
    (
        "non-string repository",
        "POST",
        "/v1/subscriptions",
        b'{"repository": {"a": 1}, "events_url": "http://127.0.0.1:1/e"}',
        400,
        "repository",
    ),
    ("public IP in 10/8", "POST", "/v1/publicips", b'{"range": "10.1.2.3"}', 400, "range"),
    ("loopback IP", "POST", "/v1/publicips", b'{"range": "127.0.0.1"}', 400, "range"),
    ("multicast IP", "POST", "/v1/publicips", b'{"range": "224.0.0.1"}', 400, "range"),
    ("broadcast IP", "POST", "/v1/publicips", b'{"range": "255.255.255.255"}', 400, "range"),
    ("unspecified IP", "POST", "/v1/publicips", b'{"range": "0.0.0.0"}', 400, "range"),
    ("pool bound", "POST", "/v1/publicips", b'{"range": "11.0.0.0-11.0.255.255"}', 400, "range"),
    ("non-string range", "POST", "/v1/vlans", b'{"range": 5}', 400, "range"),
    ("huge VLAN", "POST", "/v1/vlans", b'{"range": "1-' + b"9" * 40 + b'"}', 400, "VLAN"),
    (
        "infinite timeout",
        "POST",
        "/v1/vaps/stop",
        b'{"name": "x", "timeout": 1e400}',
        400,
        "timeout",
    ),
    ("boolean timeout", "POST", "/v1/vaps/stop", b'{"name": "x", "timeout": true}', 400, "timeout"),
    (
        "integer for boolean",
        "POST",
        "/v1/vaps/update",
        b'{"name": "x", "dry_run": 1}',
        400,
        "dry_run",
    ),
    (
        "string for boolean",
        "POST",
        "/v1/trust",
        b'{"require_signed": "yes"}',
        400,
        "require_signed",
    ),
    (
        "NUL in a bundled file name",
        "POST",
        "/v1/vaps/start",
        b'{"bundle": {"root_dir": "/a", "root": "w.cvl", "files": {"w.cvl": "", "a\\u0000b": ""}}}',
        400,
        "bundle",
    ),
    (
        "surrogate in a bundled file name",
        "POST",
        "/v1/vaps/start",
        b'{"bundle": {"root_dir": "/a", "root": "\\udc00.cvl", "files": {"\\udc00.cvl": ""}}}',
        400,
        "bundle",
    ),
    ("a path, not a bundle", "POST", "/v1/vaps/start", b'{"cvl": "/etc/x.cvl"}', 400, "bundle"),
    ("NUL in a VAP name", "POST", "/v1/vaps/stop", b'{"name": "a\\u0000b"}', 400, "name"),
    (
        "surrogate secret",
        "POST",
        "/v1/vaps/start",
        b'{"bundle": {}, "secrets": {"k": "\\udc00"}}',
        400,
        "secrets",
    ),
    ("NUL in query", "GET", "/v1/vaps?name=%00", b"", 400, "name"),
    ("NUL token name", "POST", "/v1/tokens", b'{"name": "a\\u0000", "role": "user"}', 400, "name"),
    ("deep JSON", "POST", "/v1/hosts", b"[" * 100_000 + b"]" * 100_000, 400, "JSON object"),
    ("bad UTF-8", "POST", "/v1/hosts", b'{"name": "\xff\xfe"}', 400, "JSON object"),
]


def snapshot(state: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the state database."""
    db = sqlite3.connect(f"file:{state / 'utility.sqlite3'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(map(tuple, db.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    finally:
        db.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int, str]]:
    tmp = tmp_path_factory.mktemp("bad-input")
    state, port = tmp / "state", free_port()
    token = subprocess.run(
        [*CUI, "utility", "token", "add", "root", "--role", "admin", "--state", str(state)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    ).stdout.strip()
    running = Daemon(state, "--listen", f"127.0.0.1:{port}")
    env = {"COLLECTIVE_UTILITY": f"http://127.0.0.1:{port}", "COLLECTIVE_TOKEN": token}
    uri = simulated_host_uri(tmp, "h1")
    cui("host", "add", "h1", "--uri", uri, "--memory", "1G", "--max-vms", "8", env=env)
    cui("vlan", "add", "100-103", env=env)
    cui("publicip", "add", "192.0.2.10-192.0.2.12", env=env)
    cui("start", str(paper_tree(PAPER, tmp / "acme")), env=env)
    yield running, port, token
    running.kill()


def send(port: int, token: str, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn.request(method, path, body=raw or None, headers=headers)
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return answer.status, json.loads(data)


@pytest.mark.parametrize(("kind", "method", "path", "raw", "status", "name"), CASES)
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(
    daemon: tuple[Daemon, int, str],
    kind: str,
    method: str,
    path: str,
    raw: bytes,
    status: int,
    name: str,
) -> None:
    running, port, token = daemon
    before = snapshot(running.state)
    assert before["vms"] and before["vlans"]  # a VAP is running: there are allocations
    got, answer = send(port, token, method, path, raw)
    assert got == status, (kind, got, answer)
    assert name in answer["error"], (kind, answer)
    assert snapshot(running.state) == before, kind
    assert running.proc.poll() is None


def test_a_host_uri_cannot_be_registered_twice(daemon: tuple[Daemon, int, str]) -> None:
    running, port, token = daemon
    before = snapshot(running.state)
    uri = before["hosts"][0][1]
    got, answer = send(port, token, "POST", "/v1/hosts", host(f'"uri": {json.dumps(uri)}'))
    assert got == 409 and "'uri'" in answer["error"] and "already registered" in answer["error"]
    assert snapshot(running.state) == before
