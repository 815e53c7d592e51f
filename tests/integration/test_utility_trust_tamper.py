"""The utility trusts the signed tag, not the server: a tampering proxy in front of a real
gunicorn repository server changes one answer at a time (the version list, the CVL, the domain
XML, the disk list, a disk object, the commit object), and each change is refused with a message
naming what did not match; the untouched server's signed version runs."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance
from utility.adapters import appliance_files
from utility.adapters.simulation import simulated_host_uri
from utility.errors import ApplianceError, CheckFailed, TrustRefused
from utility.service.manager import Caller, ClusterManager

ADMIN = Caller("root", "admin")
Tamper = Callable[[str, bytes], bytes]


@contextmanager
def tampering_proxy(upstream: str, tampers: dict[str, Tamper]) -> Iterator[str]:
    """Forward GETs to `upstream`; a path in `tampers` gets its body rewritten."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("range",)}
            answer = requests.get(
                upstream + self.path, headers=headers, timeout=30, allow_redirects=False
            )
            body = answer.content
            path = self.path.split("?")[0]
            if path in tampers:
                body = tampers[path](path, body)
            self.send_response(answer.status_code)
            for key in ("Content-Type", "Location", "Content-Range"):
                if key in answer.headers:
                    self.send_header(key, answer.headers[key])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def ssh_key(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pub", "-f", str(path)], check=True
    )
    return "publisher@example.org " + path.with_suffix(".pub").read_text().strip()


def test_tampered_answers_are_refused_and_the_signed_version_runs(tmp_path: Path) -> None:
    trusted = ssh_key(tmp_path / "trusted")
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "src", "DNS"), sign=str(tmp_path / "trusted"))
    files = Repository(repo.path)
    commit = files.commit(1).id.decode()
    (disk,) = files.disks(1)
    tampers: dict[str, Tamper] = {}

    def replace(old: bytes, new: bytes) -> Tamper:
        def change(path: str, body: bytes) -> bytes:
            assert old in body, (path, body[:300])
            return body.replace(old, new)

        return change

    with running_server(root, workers=2) as server, tampering_proxy(server.url, tampers) as proxy:
        url = f"{proxy}/DNS"
        user = tmp_path / "user"
        user.mkdir()
        cvl = user / "MyDNS.cvl"
        cvl.write_text(
            f'import {{ url => "{url}", cvl => "DNS.cvl" }} DNS;\n'
            'MyDNS extends DNS { domain = "acme.org"; }\n'
        )
        runs = iter(range(100))

        def manager() -> ClusterManager:
            n = next(runs)  # a fresh state (and object cache) per case, as a fresh daemon
            appliance_files._MEMO.clear()
            m = ClusterManager(tmp_path / f"state{n}")
            m.add_host(ADMIN, "h1", simulated_host_uri(tmp_path, f"h{n}"), 1 << 30, 4)
            m.add_vlans(ADMIN, "100-101")
            m.add_public_ips(ADMIN, "192.0.2.1-192.0.2.3")
            m.set_trust(ADMIN, url, True)
            m.trust_key(ADMIN, url, trusted)
            return m

        def refused(path: str, change: Tamper, error: type[Exception], message: str) -> None:
            tampers.clear()
            tampers[path] = change
            m = manager()
            with pytest.raises(error, match=message):
                m.start(ADMIN, str(cvl))
            assert m.status(ADMIN) == [] or m.status(ADMIN)[0]["status"] == "failed"
            m.close()

        refused(
            "/DNS/",
            lambda _p, b: b.replace(commit.encode(), b"f" * 40),
            CheckFailed,
            r"v1: the tag does not name the version's commit \(the server lists fffffff",
        )
        refused(
            "/DNS/versions/1/DNS.cvl",
            replace(b'provides = "DNS";', b'provides = "DNS"; '),
            CheckFailed,
            r"v1: DNS.cvl as served does not match the signed commit",
        )
        refused(
            "/DNS/versions/1/dns.xml",
            replace(b"128", b"999"),
            CheckFailed,
            r"v1: dns.xml as served does not match the signed commit",
        )
        forged = "ab" * 32
        refused(
            "/DNS/versions/1/disks.json",
            replace(disk["sha256"].encode(), forged.encode()),
            TrustRefused,
            rf"the server's disk list gives root.qcow2 as sha256:{forged[:12]}, the signed "
            rf"commit's LFS pointer names sha256:{disk['sha256'][:12]}",
        )
        refused(
            f"/DNS/objects/sha256/{disk['sha256']}",
            lambda _p, b: b[:-1] + b"\x01",
            ApplianceError,
            r"cannot fetch disk 'root.qcow2'.*corrupt",
        )
        refused(
            f"/DNS/git-objects/{commit}",
            replace(b"tree ", b"tree  "),
            CheckFailed,
            r"sent git object .* with different content \(its SHA-1 does not match\)",
        )

        # a refused start read a tampered dns.xml without a verified release (the version was
        # refused first): it is remembered, but never used once it fails a check
        tampers.clear()
        tampers["/DNS/"] = lambda _p, b: b.replace(commit.encode(), b"f" * 40)
        tampers["/DNS/versions/1/dns.xml"] = replace(b"128", b"999")
        m = manager()
        with pytest.raises(CheckFailed, match="the tag does not name the version's commit"):
            m.start(ADMIN, str(cvl))
        m.close()
        assert any(b"999" in v for v in appliance_files._MEMO.values() if isinstance(v, bytes))
        tampers.clear()
        m = ClusterManager(tmp_path / "state-final")  # the server is honest again; memo kept
        m.add_host(ADMIN, "h1", simulated_host_uri(tmp_path, "hfinal"), 1 << 30, 4)
        m.add_vlans(ADMIN, "100-101")
        m.add_public_ips(ADMIN, "192.0.2.1-192.0.2.3")
        m.set_trust(ADMIN, url, True)
        m.trust_key(ADMIN, url, trusted)
        started = m.start(ADMIN, str(cvl))
        assert started["status"] == "running" and started["components"][0]["version"] == "1"
        m.close()
        assert json.loads(requests.get(f"{url}/", timeout=10).content)["latest"] == 1
