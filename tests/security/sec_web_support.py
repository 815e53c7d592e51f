"""Shared by the sec-web security tests (server resolution, signature binding, events, serve).

Real parts only: stock git and git-lfs, gunicorn (`reposerver.testing.running_server`) and
`cui serve`, a loopback HTTP listener that records every request it gets, and a snapshot of a
repository's store (refs, every object file's hash, version records, `git fsck --strict`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from reposerver.testing import Server

MARKER = "PLANTED-MARKER-7f3c9e1d"
"""A string that lives only in a host file or a loopback listener's answers: if it ever shows
up in a response, the server read it on someone else's behalf."""


def git(
    *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run stock git (no prompts); with `check`, fail the test with its output."""
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def clone(server: Server, name: str, where: Path) -> Path:
    """A work tree of repository `name`, pushing with the server's credentials."""
    git("clone", "-q", f"{server.url}/{name}.git", str(where))
    git("config", "lfs.locksverify", "false", cwd=where)
    git("remote", "set-url", "--push", "origin", server.push_url(name), cwd=where)
    return where


def store_state(repo_path: Path) -> dict[str, object]:
    """Everything a refused push must leave as it was: refs, every file under the git and LFS
    object stores (by hash), the version records and the config; `git fsck --strict` clean."""
    refs = git("for-each-ref", "--format=%(objectname) %(refname)", cwd=repo_path).stdout
    files = {}
    for sub in ("objects", "lfs/objects", "versions", "secrets", "trust"):
        for path in sorted((repo_path / sub).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(repo_path))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    fsck = git("fsck", "--strict", "--no-dangling", cwd=repo_path, check=False)
    assert fsck.returncode == 0, f"git fsck --strict failed:\n{fsck.stdout}{fsck.stderr}"
    config = (repo_path / "collective.json").read_text()
    return {"refs": refs, "files": files, "config": config}


class Listener:
    """A loopback HTTP server that logs each request and answers with `MARKER` (or a redirect,
    or a configured body), so a test can assert the server under test never asked it."""

    def __init__(self, body: str = MARKER, redirect: str | None = None) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.body = body
        self.redirect = redirect
        self.delay = 0.0
        """Seconds to wait before answering (a slow origin)."""
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                listener.requests.append((self.command, self.path, data))
                time.sleep(listener.delay)
                if listener.redirect is not None:
                    self.send_response(302)
                    self.send_header("Location", listener.redirect + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = listener.body.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer  # noqa: N815 - the names http.server calls

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def listening(body: str = MARKER, redirect: str | None = None) -> Iterator[Listener]:
    """A `Listener` for the duration of the block."""
    listener = Listener(body, redirect)
    try:
        yield listener
    finally:
        listener.close()


def raw_http(url: str, request: bytes, timeout: float = 30) -> tuple[int | None, bytes]:
    """Send `request` as is to the server at `url`, half-close, and return (status, answer).

    The status is None when the server closed the connection without an HTTP answer.
    """
    host, _, port = url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered early (e.g. 413) and closed: read what it said
            pass
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    if not answer.startswith(b"HTTP/"):
        return None, answer
    return int(answer.split(b" ", 2)[1]), answer
