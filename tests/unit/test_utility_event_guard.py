"""Publish-event rules: size limit, signature before parsing, exact fields, the window."""

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

from utility.adapters.event_guard import MAX_EVENT_BYTES, EventRules, check_fresh, parse_event
from utility.errors import EventRefused, UtilityError
from utility.service.manager import ClusterManager
from utility.web.api import EVENTS_PATH, create_app

SECRET = b"guard-secret"


def sign(raw: bytes, secret: bytes = SECRET) -> dict[str, str]:
    mac = hmac.new(secret, raw, hashlib.sha256).hexdigest()
    return {"X-Collective-Signature": f"sha256={mac}", "Content-Type": "application/json"}


def good(**changes: object) -> dict[str, object]:
    return {
        "repository": "http://repo/DNS",
        "version": 2,
        "tag": "v2",
        "commit": "a" * 40,
        "signer": None,
        "id": secrets.token_hex(16),
        "timestamp": time.time(),
        **changes,
    }


@pytest.fixture
def app(tmp_path: Path):  # type: ignore[no-untyped-def]
    manager = ClusterManager(tmp_path / "state")
    yield create_app(manager, require_token=True, events_secret=SECRET).test_client(), manager
    manager.close()


def seen(manager: ClusterManager) -> int:
    return int(manager.store.read().execute("SELECT count(*) FROM seen_events").fetchone()[0])


def test_a_body_over_the_limit_is_refused_unread(app) -> None:  # type: ignore[no-untyped-def]
    client, manager = app
    raw = json.dumps(good(signer="x" * MAX_EVENT_BYTES)).encode()
    answer = client.post(EVENTS_PATH, data=raw, headers=sign(raw))
    assert answer.status_code == 413 and str(MAX_EVENT_BYTES) in answer.get_json()["error"]
    assert seen(manager) == 0


def test_the_signature_is_checked_before_the_body_is_parsed(app) -> None:  # type: ignore[no-untyped-def]
    client, manager = app
    garbage = b'{"repository": "\xff\xfe not json'
    answer = client.post(EVENTS_PATH, data=garbage, headers=sign(garbage, b"wrong"))
    assert answer.status_code == 401 and "does not match" in answer.get_json()["error"]
    answer = client.post(EVENTS_PATH, data=garbage, headers=sign(garbage))
    assert answer.status_code == 400 and "not valid JSON" in answer.get_json()["error"]
    assert seen(manager) == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"version": True},
        {"version": 10**30},
        {"version": "2"},
        {"timestamp": "now"},
        {"timestamp": False},
        {"id": "short"},
        {"id": "Z" * 32},
        {"commit": "not-a-commit"},
        {"repository": "http://repo/\x00DNS"},
        {"extra": 1},
    ],
)
def test_fields_are_exactly_the_contract(app, changes) -> None:  # type: ignore[no-untyped-def]
    client, manager = app
    raw = json.dumps(good(**changes)).encode()
    answer = client.post(EVENTS_PATH, data=raw, headers=sign(raw))
    assert answer.status_code == 400, answer.get_json()
    assert seen(manager) == 0


def test_a_missing_id_is_refused() -> None:
    body = good()
    del body["id"]
    with pytest.raises(UtilityError, match="exactly the fields"):
        parse_event(json.dumps(body).encode())


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6))
def test_the_window_and_skew(offset: float) -> None:
    rules, now = EventRules(window=600, skew=30), 1_800_000_000.0
    event = {"timestamp": now - offset}
    if -30 <= offset <= 600:
        check_fresh(event, rules, now)
    else:
        with pytest.raises(EventRefused):
            check_fresh(event, rules, now)


@given(st.binary(max_size=300))
def test_parse_never_crashes(raw: bytes) -> None:
    try:
        parse_event(raw)
    except UtilityError:
        pass
