"""The daemon on a network: https with a certificate made here, the client verifying it against
that CA, plain TCP refused off loopback, tokens never sent over plain http to a remote host, and
the background work (reconcile) in exactly one process of the gunicorn daemon."""

from __future__ import annotations

import datetime
import ipaddress
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import REPO_ROOT, free_port
from tests.daemons import CUI, run_cui
from tests.daemons import UtilityDaemon as Daemon
from utility.adapters.tls import is_loopback
from utility.client.daemon_client import UtilityClient
from utility.errors import UtilityError


def cui(
    *args: str, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """`cui ARGS` (must succeed unless `ok` is False)."""
    return run_cui(*args, env=env, ok=ok)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].chmod(0o600)
    return paths


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_https_with_a_ca_file_and_background_work_in_one_process(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    state, port = tmp_path / "state", free_port()
    token = subprocess.run(
        [*CUI, "utility", "token", "add", "root", "--role", "admin", "--state", str(state)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    ).stdout.strip()
    daemon = Daemon(
        state, "--listen", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    try:
        url = f"https://127.0.0.1:{port}"
        assert f"listening on {url}" in daemon.output()
        env = {"COLLECTIVE_TOKEN": token}
        cui("host", "list", "--utility", url, "--ca-file", str(ca), env=env)
        cui("host", "list", "--utility", url, env={**env, "COLLECTIVE_CA": str(ca)})
        unverified = cui("host", "list", "--utility", url, env=env, ok=False)
        assert unverified.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
        with pytest.raises(UtilityError):  # plain http to the https port gets no API answer
            UtilityClient(f"http://127.0.0.1:{port}", token, timeout=10).whoami()
        assert len(children(daemon.proc.pid)) == 1  # one gunicorn worker
        db = sqlite3.connect(f"file:{state / 'utility.sqlite3'}?mode=ro", uri=True)
        runs = db.execute("SELECT text FROM events WHERE kind='reconcile'").fetchall()
        db.close()
        assert len(runs) == 1, runs
        assert runs[0][0].startswith(f"process {children(daemon.proc.pid)[0]}:")
    finally:
        daemon.kill()


@pytest.mark.parametrize("address", ["0.0.0.0", "192.0.2.1", "[::]", "example.org"])
def test_plain_tcp_off_loopback_is_refused_before_anything_opens(
    tmp_path: Path, address: str
) -> None:
    state = tmp_path / "state"
    done = subprocess.run(
        [*CUI, "utility", "serve", "--state", str(state), "--listen", f"{address}:{free_port()}"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert done.returncode != 0 and "plain TCP is only for loopback" in done.stderr
    assert not state.exists()


def test_the_client_never_sends_a_token_over_plain_http_to_a_remote_host() -> None:
    for url in ("http://192.0.2.1:9", "http://example.org:9", "http://[2001:db8::1]:9"):
        with pytest.raises(UtilityError, match="refusing to send a bearer token"):
            UtilityClient(url, "secret-token", timeout=1).whoami()
    done = subprocess.run(
        [*CUI, "host", "list", "--utility", "http://192.0.2.1:9"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "COLLECTIVE_TOKEN": "secret-token"},
        timeout=60,
    )
    assert done.returncode != 0 and "refusing to send a bearer token" in done.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("192.0.2.1", False),
        ("::", False),
        ("localhost.example.org", False),
        ("", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
