"""The repository server's subscriber endpoint and raw git objects (Flask test client)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from reposerver import create_app
from reposerver.auth import token_digest
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import sample_appliance

TOKEN = "publisher-token"
GOOD = {"Authorization": "Basic " + base64.b64encode(f"pub:{TOKEN}".encode()).decode()}
BAD = {"Authorization": "Basic " + base64.b64encode(b"pub:nope").decode()}
EVENTS = "http://127.0.0.1:9/v1/events/publish"


def app_for(tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    root.mkdir()
    Repository.create(root / "DNS")
    app = create_app(
        {
            "root": str(root),
            "users": {"pub": {"token_sha256": token_digest(TOKEN)}},
            "allowed_subscriber_networks": ["127.0.0.0/8"],  # EVENTS is on loopback
        }
    )
    return app.test_client(), root / "DNS"


def test_subscribers_need_write_credentials(tmp_path: Path) -> None:
    client, _ = app_for(tmp_path)
    for method in ("get", "post", "delete"):
        for headers in ({}, BAD):
            answer = getattr(client, method)(
                "/DNS/subscribers", json={"url": EVENTS}, headers=headers
            )
            assert answer.status_code == 401, (method, headers)
            assert "credentials required" in answer.get_json()["error"]


def test_subscribe_generates_or_takes_a_secret_kept_0600_out_of_the_config(tmp_path: Path) -> None:
    client, repo = app_for(tmp_path)
    answer = client.post("/DNS/subscribers", json={"url": EVENTS}, headers=GOOD)
    assert answer.status_code == 201 and answer.headers["Cache-Control"] == "no-store"
    secret = answer.get_json()["secret"]
    assert len(secret) >= 40
    (sub,) = Repository(repo).config.subscribers
    assert sub.url == EVENTS and sub.resolve_secret().decode() == secret
    assert stat.S_IMODE(os.stat(sub.secret_file or "").st_mode) == 0o600
    assert secret not in (repo / "collective.json").read_text()
    listed = client.get("/DNS/subscribers", headers=GOOD).get_json()
    assert listed == [{"url": EVENTS, "status": "active"}]

    given = "a-given-secret-of-enough-length"
    again = client.post("/DNS/subscribers", json={"url": EVENTS, "secret": given}, headers=GOOD)
    assert again.status_code == 201 and "secret" not in again.get_json()  # never echoed
    (replaced,) = Repository(repo).config.subscribers
    assert replaced.resolve_secret().decode() == given
    assert not Path(sub.secret_file or "").exists()  # the old secret is gone

    assert client.delete("/DNS/subscribers", json={"url": EVENTS}, headers=GOOD).status_code == 200
    assert Repository(repo).config.subscribers == ()
    assert not Path(replaced.secret_file or "").exists()
    gone = client.delete("/DNS/subscribers", json={"url": EVENTS}, headers=GOOD)
    assert gone.status_code == 404 and "not a subscriber" in gone.get_json()["error"]


def test_bad_subscriber_requests_are_clear_400s(tmp_path: Path) -> None:
    client, repo = app_for(tmp_path)
    cases = [
        ({"url": "ftp://x/"}, "must be http"),
        ({}, "'url'"),
        ({"url": EVENTS, "secret": "short"}, "16 or more"),
        ({"url": EVENTS, "secret": 5}, "'secret' must be a string"),
    ]
    for body, message in cases:
        answer = client.post("/DNS/subscribers", json=body, headers=GOOD)
        assert answer.status_code == 400 and message in answer.get_json()["error"], body
    assert Repository(repo).config.subscribers == ()
    assert list((repo / "secrets").glob("*")) == []


def test_git_objects_are_served_in_canonical_form_named_by_their_sha1(tmp_path: Path) -> None:
    client, repo = app_for(tmp_path)
    publish(repo, sample_appliance(tmp_path / "src", "DNS"))
    commit = Repository(repo).commit(1)
    for sha in (commit.id.decode(), commit.tree.decode()):
        answer = client.get(f"/DNS/git-objects/{sha}")
        assert answer.status_code == 200
        assert hashlib.sha1(answer.data).hexdigest() == sha
        assert answer.headers["Cache-Control"].endswith("immutable")
    assert client.get(f"/DNS/git-objects/{commit.id.decode()}").data.startswith(b"commit ")
    assert client.get("/DNS/git-objects/" + "0" * 40).status_code == 404
    assert client.get("/DNS/git-objects/XYZ").status_code == 400
