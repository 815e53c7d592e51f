"""Issue 10 item 6: `cui serve` works for git, and no bad input gets a 5xx (cui serve, gunicorn).

Under the werkzeug development server `cui serve` runs, a small push (sent with Content-Length)
and `git clone --depth 1` must finish, not hang; every request in the bad-input table below is
sent byte for byte over a socket to both servers and must get a 4xx (or an ordinary git answer),
never a 5xx, with the store unchanged afterwards.
"""

from __future__ import annotations

import base64
import gzip
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import Server, running_server, sample_appliance
from tests.security.sec_web_support import clone, git, raw_http, store_state

pytestmark = pytest.mark.slow
LIMIT = 1 << 20
SERVERS = ("cui-serve", "gunicorn")


@contextmanager
def serving(kind: str, root: Path) -> Iterator[Server]:
    extra = {"max_push_bytes": LIMIT}
    if kind == "cui-serve":
        with running_server(root, extra=extra, server="cui serve") as server:
            yield server
    else:
        with running_server(root, workers=2, extra=extra) as server:
            yield server


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "app"))
    return root


@pytest.mark.parametrize("kind", SERVERS)
def test_small_push_and_shallow_clone_finish(kind: str, root: Path, tmp_path: Path) -> None:
    with serving(kind, root) as server:
        shallow = git("clone", "--depth", "1", f"{server.url}/DNS.git", str(tmp_path / "s"),
                      timeout=60)  # fmt: skip
        assert shallow.returncode == 0
        work = clone(server, "DNS", tmp_path / "work")
        (work / "DNS.cvl").write_text((work / "DNS.cvl").read_text() + "/* v2 */\n")
        git("commit", "-q", "-am", "v2", cwd=work)
        git("tag", "-a", "v2", "-m", "v2", cwd=work)
        git("push", "origin", "main", "v2", cwd=work, timeout=60)
        # a push git sends chunked (larger than its post buffer) goes through the bounded spool
        noise = os.urandom(8192).hex()  # incompressible, so the pack exceeds the buffer
        (work / "DNS.cvl").write_text((work / "DNS.cvl").read_text() + f"/* {noise} */\n")
        git("commit", "-q", "-am", "v3", cwd=work)
        git("tag", "-a", "v3", "-m", "v3", cwd=work)
        git("-c", "http.postBuffer=1024", "push", "origin", "main", "v3", cwd=work, timeout=60)
    assert Repository(root / "DNS").latest() == 3


def _request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


RECEIVE = {"Content-Type": "application/x-git-receive-pack-request"}
UPLOAD = {"Content-Type": "application/x-git-upload-pack-request"}
CHUNKED = {"Transfer-Encoding": "chunked"}
BAD_INPUTS: list[tuple[str, str, str, dict[str, str], bytes, set[int]]] = [
    # (case, method, path, headers, body, acceptable statuses); AUTH is added where marked.
    ("unknown path under .git", "GET", "/DNS.git/x/HEAD", {}, b"", {404}),
    ("dumb object path", "GET", "/DNS.git/objects/info/packs", {}, b"", {404}),
    ("no such repository", "GET", "/Nope.git/info/refs?service=git-upload-pack", {}, b"", {404}),
    ("bad repository name", "GET", "/-x.git/info/refs", {}, b"", {400, 404}),
    ("dot-dot path", "GET", "/DNS.git/../../etc/passwd", {}, b"", {400, 404}),
    ("unknown service", "GET", "/DNS.git/info/refs?service=git-bogus", {}, b"", {403, 404}),
    ("push without credentials", "POST", "/DNS.git/git-receive-pack", RECEIVE, b"0000", {401}),
    ("wrong content type", "POST", "/DNS.git/git-receive-pack#AUTH", {}, b"0000", {403}),
    (
        "malformed chunked body",
        "POST",
        "/DNS.git/git-receive-pack#AUTH",
        {**RECEIVE, **CHUNKED},
        b"zz\r\nnot hex\r\n0\r\n\r\n",
        {400},
    ),
    (
        "chunked body over max_push_bytes",
        "POST",
        "/DNS.git/git-receive-pack#AUTH",
        {**RECEIVE, **CHUNKED},
        _chunked(*[b"0" * 65536] * (LIMIT // 65536 + 2)),
        {413},
    ),
    (
        "truncated chunked body",
        "POST",
        "/DNS.git/git-receive-pack#AUTH",
        {**RECEIVE, **CHUNKED},
        b"100\r\nshort",
        {400},
    ),
    (
        "Content-Length larger than the body",
        "POST",
        "/DNS.git/git-receive-pack#AUTH",
        {**RECEIVE, "Content-Length": "100"},
        b"0000",
        {200, 400},
    ),
    (
        "garbage pkt-lines",
        "POST",
        "/DNS.git/git-receive-pack#AUTH",
        {**RECEIVE, "Content-Length": "12"},
        b"zzzzgarbage!",
        {200, 400},
    ),
    (
        "garbage upload-pack request",
        "POST",
        "/DNS.git/git-upload-pack",
        {**UPLOAD, "Content-Length": "12"},
        b"0032want xyz",
        {200, 400},
    ),
    (
        "gzip body that is not gzip",
        "POST",
        "/DNS.git/git-upload-pack",
        {**UPLOAD, "Content-Encoding": "gzip", "Content-Length": "8"},
        b"notgzip!",
        {200, 400},
    ),
    (
        "gzip bomb over max_push_bytes",
        "POST",
        "/DNS.git/git-receive-pack#AUTH",
        {**RECEIVE, "Content-Encoding": "gzip", "Content-Length": "@GZ"},
        gzip.compress(b"0" * (4 * LIMIT)),
        {200, 400, 413},
    ),
    ("bad LFS batch", "POST", "/DNS.git/info/lfs/objects/batch", {}, b"{nope", {400}),
    ("bad subscriber JSON", "POST", "/DNS/subscribers#AUTH", {}, b"{nope", {400}),
    ("bad version", "GET", "/DNS/versions/abc/DNS.cvl", {}, b"", {400}),
    ("bad object id", "GET", "/DNS/objects/sha256/xyz", {}, b"", {400}),
]


@pytest.mark.parametrize("kind", SERVERS)
def test_bad_inputs_get_no_5xx_and_change_nothing(kind: str, root: Path) -> None:
    repo = Repository(root / "DNS")
    before = store_state(repo.path)
    answers = {}
    with serving(kind, root) as server:
        auth = base64.b64encode(f"{server.user}:{server.token}".encode()).decode()
        for case, method, path, headers, body, expected in BAD_INPUTS:
            headers = dict(headers)
            if path.endswith("#AUTH"):
                path = path.removesuffix("#AUTH")
                headers["Authorization"] = f"Basic {auth}"
            if headers.get("Content-Length") == "@GZ":
                headers["Content-Length"] = str(len(body))
            if body and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
                headers["Content-Length"] = str(len(body))
            status, answer = raw_http(server.url, _request(method, path, headers, body))
            answers[case] = status
            assert status is not None and status < 500, (case, status, answer[:300])
            assert status in expected, (case, status, answer[:300])
        # the server still works after all of that
        git("ls-remote", f"{server.url}/DNS.git", timeout=30)
    assert store_state(repo.path) == before
