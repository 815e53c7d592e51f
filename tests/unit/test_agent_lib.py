"""The guest agent's security-relevant shell functions, run on the host with busybox `sh` (the
same applets as in the guest) and real openssl: the root password from `rootpw`, the X.509
subject from the certificate parameters, and the VAN's certificate authority (LDAP's
`cgi-bin/sign`, run as busybox httpd would run it: environment plus the request on stdin).

The COLLECTIVE_* variables point lib.sh at temporary directories instead of the guest's /run,
/data, /etc/shadow and console; nothing else is mocked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "examples" / "appliances" / "agent"
SIGN = ROOT / "examples" / "appliances" / "LDAP" / "rootfs" / "srv" / "ca" / "cgi-bin" / "sign"

pytestmark = pytest.mark.skipif(
    shutil.which("busybox") is None or shutil.which("openssl") is None,
    reason="needs busybox and openssl on the host",
)


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    for d in ("run/params", "data/ca"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ["PATH"],
        "COLLECTIVE_AGENT": str(AGENT),
        "COLLECTIVE_RUN": str(tmp / "run"),
        "COLLECTIVE_DATA": str(tmp / "data"),
        "COLLECTIVE_CONSOLE": str(tmp / "console.log"),
        "COLLECTIVE_SHADOW": str(tmp / "shadow"),
        **extra,
    }


def set_params(tmp: Path, **values: str) -> None:
    (tmp / "run" / "params").mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        (tmp / "run" / "params" / key).write_text(value + "\n")


def sh(tmp: Path, script: str, stdin: bytes = b"", **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["busybox", "sh", "-c", f'. "{AGENT}/lib.sh"; {script}'],
        input=stdin,
        capture_output=True,
        env=env_for(tmp, **extra),
        timeout=60,
    )


# -- rootpw -------------------------------------------------------------------------------------


def crypt_matches(password: str, hashed: str) -> bool:
    """Check a SHA-512 crypt hash with busybox's own `cryptpw`-free path: hash again with the
    same salt (mkpasswd PASSWORD SALT) and compare."""
    salt = hashed.split("$")[2]
    again = (
        subprocess.run(
            ["busybox", "mkpasswd", "-m", "sha512", "-S", salt, "-P", "0"],
            input=password.encode(),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    return again == hashed


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    password=st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40
    )
)
def test_rootpw_becomes_a_salted_hash_and_never_the_clear_value(
    tmp_path: Path, password: str
) -> None:
    set_params(tmp_path, rootpw=password)
    done = sh(tmp_path, "set_root_password")
    assert done.returncode == 0, done.stderr
    line = (tmp_path / "shadow").read_text()
    user, hashed = line.split(":")[:2]
    assert user == "root" and hashed.startswith("$6$")
    assert crypt_matches(password, hashed)
    assert not crypt_matches(password + "x", hashed)
    if len(password) > 3:
        assert password not in line
    assert (tmp_path / "shadow").stat().st_mode & 0o077 == 0


def test_without_rootpw_root_has_no_usable_password(tmp_path: Path) -> None:
    assert sh(tmp_path, "set_root_password").returncode == 0
    assert (tmp_path / "shadow").read_text().startswith("root:!:")


# -- the subject from the certificate parameters -----------------------------------------------


def subject_of(tmp: Path, subj: str) -> str:
    key = tmp / "k.pem"
    if not key.exists():
        subprocess.run(
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                str(key),
            ],
            check=True,
            capture_output=True,
        )
    done = subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-key",
            str(key),
            "-subj",
            subj,
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OPENSSL_CONF": str(AGENT / "openssl.cnf")},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_slash_in_a_parameter_cannot_add_a_field_to_the_subject(tmp_path: Path) -> None:
    set_params(
        tmp_path, country="US", org="Acme/CN=evil.example", ou="a\\b", certemail="x@acme.org"
    )
    subj = sh(tmp_path, 'subject_dn "m.acme.org"').stdout.decode().strip()
    parsed = subject_of(tmp_path, subj)
    # one O holding the whole value (slash and all), one CN: the one the caller gave
    assert parsed == (
        "subject=CN=m.acme.org,emailAddress=x@acme.org,OU=a\\\\b,O=Acme/CN=evil.example,C=US"
    ), parsed


# -- the VAN's certificate authority (LDAP's cgi-bin/sign) -------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    """A CA made as the LDAP appliance makes it, and certhosts naming m at 10.0.0.6."""
    env_for(tmp_path)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            str(tmp_path / "data/ca/ca.key"),
            "-out",
            str(tmp_path / "data/ca/ca.crt"),
            "-subj",
            "/O=Acme/CN=Acme CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "OPENSSL_CONF": str(AGENT / "openssl.cnf")},
    )
    set_params(tmp_path, domain="acme.org", org="Acme", certhosts="name=m&ip=10%2E0%2E0%2E6")
    return tmp_path


def csr(tmp: Path, cn: str = "evil.example") -> bytes:
    key = tmp / "req.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-subj",
            f"/CN={cn}",
            "-out",
            str(tmp / "req.csr"),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "OPENSSL_CONF": str(AGENT / "openssl.cnf")},
    )
    return (tmp / "req.csr").read_bytes()


def sign(
    tmp: Path, body: bytes, method: str = "POST", addr: str = "10.0.0.6", length: str | None = None
) -> tuple[str, bytes]:
    done = subprocess.run(
        ["busybox", "sh", str(SIGN)],
        input=body,
        capture_output=True,
        env=env_for(
            tmp,
            REQUEST_METHOD=method,
            REMOTE_ADDR=addr,
            CONTENT_LENGTH=str(len(body)) if length is None else length,
        ),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    head, _, rest = done.stdout.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0].decode()
    return status, rest


def leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "run").glob("ca-req.*"))


def test_the_ca_signs_for_the_callers_registered_name_whatever_the_request_asks(ca: Path) -> None:
    status, body = sign(ca, csr(ca, cn="evil.example"), addr="::ffff:10.0.0.6")
    assert status.startswith("Content-Type: application/x-pem-file"), status
    (ca / "got.crt").write_bytes(body)
    text = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(ca / "got.crt"),
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CN = m.acme.org" in text and "evil" not in text
    assert "DNS:m.acme.org" in text and "IP Address:10.0.0.6" in text
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca / "data/ca/ca.crt"), str(ca / "got.crt")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    assert leftovers(ca) == []


@pytest.mark.parametrize(
    ("method", "addr", "length", "body", "status"),
    [
        ("GET", "10.0.0.6", None, b"", "HTTP/1.0 405"),
        ("POST", "10.0.0.9", None, None, "HTTP/1.0 403"),  # not in certhosts
        ("POST", "10.0.0.66", None, None, "HTTP/1.0 403"),  # prefix of no listed address
        ("POST", "10.0.0.6", "9999999", None, "HTTP/1.0 413"),
        ("POST", "10.0.0.6", "12x", None, "HTTP/1.0 411"),
        ("POST", "10.0.0.6", None, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "HTTP/1.0 400"),
    ],
)
def test_hostile_requests_are_refused_and_sign_nothing(
    ca: Path, method: str, addr: str, length: str | None, body: bytes | None, status: str
) -> None:
    before = sorted(p.name for p in (ca / "data" / "ca").iterdir())
    got, answer = sign(ca, csr(ca) if body is None else body, method, addr, length)
    assert got.startswith(status), (got, answer)
    assert b"BEGIN CERTIFICATE-----" not in answer
    assert sorted(p.name for p in (ca / "data" / "ca").iterdir()) == before
    assert leftovers(ca) == []


def test_a_request_whose_self_signature_is_broken_is_refused(ca: Path) -> None:
    pem = csr(ca).decode()
    lines = pem.splitlines()
    middle = len(lines) // 2
    lines[middle] = lines[middle][:-4] + ("AAAA" if not lines[middle].endswith("AAAA") else "BBBB")
    status, answer = sign(ca, ("\n".join(lines) + "\n").encode())
    assert status.startswith("HTTP/1.0 400"), (status, answer)
