"""Fetches from a repository server have a total deadline, not only a per-read timeout.

A loopback server that answers a byte every 50 ms never trips a 1 s read timeout, yet the fetch
must give up at its 1 s deadline; a normal answer still arrives whole.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from reposerver.client import HttpRepository
from reposerver.errors import Unreachable


class Dribble(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b'{"latest": 1, "versions": []}' if self.path.endswith("/fast/") else b"x" * 400
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(len(body)):
            if "fast" not in self.path:
                time.sleep(0.05)
            try:
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dribble)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_dribbling_server_is_cut_off_at_the_deadline(server: str) -> None:
    repo = HttpRepository(f"{server}/slow", timeout=1.0, deadline=1.0)
    started = time.monotonic()
    with pytest.raises(Unreachable, match="deadline"):
        repo.index()
    assert 0.9 < time.monotonic() - started < 2.5  # 400 bytes would take 20 s


def test_a_prompt_answer_arrives_whole(server: str) -> None:
    assert HttpRepository(f"{server}/fast", timeout=1.0, deadline=1.0).latest() == 1
