"""Publish events: only correctly signed events are accepted; which VAPs an event affects."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import REPO_ROOT
from utility.adapters.event_guard import authenticate, parse_event
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.errors import Unauthorized, UtilityError
from utility.service.autoupdate import AutoUpdater
from utility.service.manager import Caller, ClusterManager
from utility.web.api import create_app

SECRET = b"shared-secret"


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def event(url: str = "http://repo/DNS", version: int = 2) -> bytes:
    return json.dumps(
        {
            "repository": url,
            "version": version,
            "tag": f"v{version}",
            "commit": "a" * 40,
            "signer": None,
            "id": secrets.token_hex(16),
            "timestamp": time.time(),
        }
    ).encode()


def verify_event(body: bytes, header: str | None, secret: bytes) -> dict:
    """Authenticate with `secret` alone (the global secret), then parse."""
    assert authenticate(body, header, {}, secret) is None
    return parse_event(body)


@given(st.text(min_size=1, max_size=80).filter(lambda u: "\x00" not in u), st.integers(1, 10**6))
def test_any_correctly_signed_event_verifies(url: str, version: int) -> None:
    body = event(url, version)
    assert verify_event(body, sign(body), SECRET)["version"] == version


@given(st.binary(min_size=1, max_size=200), st.integers(0, 255))
def test_any_changed_byte_or_wrong_secret_is_refused(body: bytes, flip: int) -> None:
    good = sign(body)
    tampered = bytes([body[0] ^ (flip or 1)]) + body[1:]
    with pytest.raises(Unauthorized):
        verify_event(tampered, good, SECRET)
    with pytest.raises(Unauthorized):
        verify_event(body, sign(body, b"other"), SECRET)


def test_missing_signature_and_bad_json_are_refused() -> None:
    with pytest.raises(Unauthorized, match="without X-Collective-Signature"):
        verify_event(event(), None, SECRET)
    with pytest.raises(UtilityError, match="exactly the fields"):
        verify_event(b"[]", sign(b"[]"), SECRET)


def test_events_endpoint_needs_no_token_but_a_valid_signature(tmp_path: Path) -> None:
    manager = ClusterManager(tmp_path / "state")
    tcp = create_app(manager, require_token=True, events_secret=SECRET).test_client()
    body = event()
    headers = {"X-Collective-Signature": sign(body), "Content-Type": "application/json"}
    assert tcp.post("/v1/events/publish", data=body, headers=headers).status_code == 202
    forged = {**headers, "X-Collective-Signature": sign(body, b"guess")}
    answer = tcp.post("/v1/events/publish", data=body, headers=forged)
    assert answer.status_code == 401 and "does not match" in answer.get_json()["error"]
    off = create_app(manager, require_token=True).test_client()
    assert off.post("/v1/events/publish", data=body, headers=headers).status_code == 403
    manager.close()


def test_only_unpinned_importers_are_affected(tmp_path: Path) -> None:
    manager = ClusterManager(tmp_path / "state")
    admin = Caller("root", "admin")
    manager.add_host(admin, "h1", simulated_host_uri(tmp_path, "h1"), 1 << 30, 8)
    manager.add_vlans(admin, "100-101")
    manager.add_public_ips(admin, "192.0.2.1-192.0.2.2")
    acme = paper_tree(REPO_ROOT / "examples" / "paper", tmp_path / "acme")
    manager.start(admin, str(acme))
    updater = AutoUpdater(manager)
    base = acme.parent.as_uri()
    # Groupware pins DNS v3 and Firewall v5; OpenLDAP and Groupware itself track latest
    assert updater.affected(f"{base}/DNS") == []
    assert updater.affected(f"{base}/Firewall/") == []
    assert updater.affected(f"{base}/OpenLDAP") == [("root/AcmeGroupware", "l")]
    assert updater.affected(f"{base}/Groupware") == [("root/AcmeGroupware", None)]
    manager.close()


def test_each_subscribed_repository_s_events_need_its_own_secret(tmp_path: Path) -> None:
    manager = ClusterManager(tmp_path / "state")
    manager.subscriptions._write(
        {  # what `subscribe` stores after the server said yes
            "http://repo/DNS": {"secret": "dns-secret", "events_url": "http://u/", "since": 0},
            "http://repo/LDAP": {"secret": "ldap-secret", "events_url": "http://u/", "since": 0},
        }
    )
    app = create_app(manager, require_token=True).test_client()

    def post(url: str, secret: bytes) -> int:
        body = event(url)
        return int(
            app.post(
                "/v1/events/publish",
                data=body,
                headers={"X-Collective-Signature": sign(body, secret)},
            ).status_code
        )

    assert post("http://repo/DNS", b"dns-secret") == 202
    assert post("http://repo/DNS/", b"dns-secret") == 202  # the same repository
    assert post("http://repo/DNS", b"ldap-secret") == 401  # another source's secret
    assert post("http://repo/LDAP", b"ldap-secret") == 202
    assert post("http://repo/Web", b"dns-secret") == 403  # not subscribed, no global secret
    with_global = create_app(manager, require_token=True, events_secret=SECRET).test_client()
    body = event("http://repo/Web")
    assert (
        with_global.post(
            "/v1/events/publish", data=body, headers={"X-Collective-Signature": sign(body)}
        ).status_code
        == 202
    )
    assert (
        with_global.post(
            "/v1/events/publish",
            data=event("http://repo/DNS"),
            headers={"X-Collective-Signature": sign(event("http://repo/DNS"))},
        ).status_code
        == 401
    )
    assert oct((tmp_path / "state" / "subscriptions.json").stat().st_mode & 0o777) == "0o600"
    manager.close()
