"""Issue 10 item 5: publish events can't be replayed or redirected.

Through real gunicorn: subscriber URLs that resolve to loopback, link-local, metadata,
unspecified or multicast addresses are refused (400, repository config unchanged) unless the
server config allows their network; oversized subscriber bodies are refused (413); an event's
signed body carries a random id and a time, and names the configured public URL whatever Host
the push came in on; without a public URL and a trusted host nothing is announced. The delivery
process re-checks the address before each POST and never follows a redirect.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import time
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from reposerver import events
from reposerver.egress import refused_reason
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import Server, running_server, sample_appliance
from tests.security.sec_web_support import git, listening, store_state

pytestmark = pytest.mark.slow
LOOPBACK = {"allowed_subscriber_networks": ["127.0.0.0/8"]}
INTERNAL = [
    "http://127.0.0.1:9/hook",
    "http://localhost:9/hook",  # a host name: every address it resolves to is checked
    "http://2130706433:9/hook",  # 127.0.0.1 spelt as one number
    "http://[::1]:9/hook",
    "http://[::ffff:127.0.0.1]:9/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[fe80::1]/hook",
    "http://0.0.0.0:9/hook",
    "http://[::]:9/hook",
    "http://224.0.0.1/hook",
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A server root with repository DNS at v1."""
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "app"))
    return root


def subscribe(server: Server, url: str, **extra: object) -> requests.Response:
    return requests.post(
        f"{server.url}/DNS/subscribers",
        json={"url": url, **extra},
        auth=(server.user, server.token),
        timeout=30,
    )


def test_internal_subscriber_urls_are_refused(root: Path) -> None:
    repo = Repository(root / "DNS")
    before = store_state(repo.path)
    with running_server(root, workers=2) as server:
        for url in INTERNAL:
            answer = subscribe(server, url)
            assert answer.status_code == 400, (url, answer.status_code, answer.text)
            assert "refused" in answer.json()["error"] or "resolve" in answer.json()["error"]
    assert store_state(repo.path) == before


def test_administrator_allowance_is_per_network(root: Path) -> None:
    with running_server(root, workers=2, extra=LOOPBACK) as server:
        assert subscribe(server, "http://127.0.0.1:9/hook").status_code == 201
        assert subscribe(server, "http://169.254.169.254/").status_code == 400


def test_oversized_subscriber_body_is_refused(root: Path) -> None:
    repo = Repository(root / "DNS")
    before = store_state(repo.path)
    with running_server(root, workers=2, extra=LOOPBACK) as server:
        answer = subscribe(server, "http://127.0.0.1:9/hook", secret="s" * (128 << 10))
        assert answer.status_code == 413
    assert store_state(repo.path) == before


def push_v2(server: Server, remote: str, work: Path) -> None:
    git("clone", "-q", f"{server.url}/DNS.git", str(work))
    git("config", "lfs.locksverify", "false", cwd=work)
    (work / "DNS.cvl").write_text((work / "DNS.cvl").read_text() + "/* v2 */\n")
    git("commit", "-q", "-am", "v2", cwd=work)
    git("tag", "-a", "v2", "-m", "v2", cwd=work)
    git("push", "-q", remote, "main", "v2", cwd=work)


def test_event_names_the_public_url_and_carries_id_and_time(root: Path, tmp_path: Path) -> None:
    """Pushed by `localhost` (the Host header a pusher chooses), the event still names the
    configured public URL; its signed body has a fresh id and the current time."""
    secret = "s3cret"
    with listening(body="ok") as receiver:
        extra = {**LOOPBACK, "subscribers": [{"url": receiver.url + "/hook", "secret": secret}]}
        with running_server(root, workers=2, extra=extra) as server:
            other_host = server.push_url("DNS").replace("127.0.0.1", "localhost")
            push_v2(server, other_host, tmp_path / "work")
            deadline = time.monotonic() + 30
            while not receiver.requests and time.monotonic() < deadline:
                time.sleep(0.05)
        (method, _, body), *rest = receiver.requests
    assert method == "POST" and rest == []
    event = json.loads(body)
    assert event["repository"] == f"{server.url}/DNS"
    assert re.fullmatch(r"[0-9a-f]{32}", event["id"])
    assert abs(event["timestamp"] - time.time()) < 120
    log = (root / "DNS" / "logs" / "deliveries.log").read_text()
    assert '"delivered": true' in log
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert events.signature(body, secret.encode()) == expected


@pytest.mark.parametrize("trusted", [False, True])
def test_no_public_url_and_untrusted_host_announces_nothing(
    root: Path, tmp_path: Path, trusted: bool
) -> None:
    """The subscriber's secret cannot be read, so an attempt to announce writes its error line
    to deliveries.log synchronously, before the push returns: no line means no attempt."""
    extra = {
        **LOOPBACK,
        "public_url": None,
        "trusted_hosts": ["127.0.0.1"] if trusted else [],
        "subscribers": [{"url": "http://127.0.0.1:9/hook", "secret_env": "SEC_WEB_UNSET_VAR"}],
    }
    log = root / "DNS" / "logs" / "deliveries.log"
    with running_server(root, workers=2, extra=extra) as server:
        push_v2(server, server.push_url("DNS"), tmp_path / "work")
    assert Repository(root / "DNS").latest() == 2
    lines = log.read_text().splitlines() if log.exists() else []
    assert len(lines) == (1 if trusted else 0), lines


def test_delivery_rechecks_the_address_and_never_follows_redirects(tmp_path: Path) -> None:
    log = tmp_path / "deliveries.log"
    body = json.dumps(events.event("https://repo.example/DNS", 1, "c" * 40, None)).encode()
    with listening(body="ok") as inside, listening() as redirector:
        redirector.redirect = inside.url
        assert not events.deliver(inside.url + "/hook", b"k", body, [], log)  # not allowed
        assert inside.requests == []
        assert "loopback" in log.read_text()
        allowed = ["127.0.0.0/8"]
        assert not events.deliver(redirector.url + "/hook", b"k", body, [], log, allowed)
        assert len(redirector.requests) == 1 and inside.requests == []
        assert events.deliver(inside.url + "/hook", b"k", body, [], log, allowed)
        assert len(inside.requests) == 1


_internal_v4 = st.one_of(
    st.ip_addresses(network="127.0.0.0/8"),
    st.ip_addresses(network="169.254.0.0/16"),
    st.ip_addresses(network="224.0.0.0/4"),
    st.just(ipaddress.IPv4Address("0.0.0.0")),
)


@given(_internal_v4)
def test_internal_addresses_are_refused_in_every_spelling(address: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert refused_reason(address) is not None and refused_reason(mapped) is not None


@given(st.ip_addresses(v=4, network="8.0.0.0/7") | st.ip_addresses(v=6, network="2001:db8::/32"))
def test_ordinary_addresses_are_not_refused(address: ipaddress.IPv4Address) -> None:
    assert refused_reason(address) is None
