"""The API's access rules through Flask's test client: tokens, roles, ownership, clear refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.service.manager import ClusterManager
from utility.web.api import create_app

PAPER = REPO_ROOT / "examples" / "paper"


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    manager = ClusterManager(tmp_path / "state")
    local = create_app(manager, require_token=False).test_client()
    tcp = create_app(manager, require_token=True).test_client()
    tokens = {}
    for name, role in (("admin", "admin"), ("alice", "user"), ("bob", "user")):
        answer = local.post("/v1/tokens", json={"name": name, "role": role})
        assert answer.status_code == 201
        tokens[name] = answer.get_json()["token"]
    uri = simulated_host_uri(tmp_path, "h1")
    admin = auth(tokens["admin"])
    assert (
        tcp.post(
            "/v1/hosts",
            json={"name": "h1", "uri": uri, "memory": "2G", "max_vms": 8},
            headers=admin,
        ).status_code
        == 201
    )
    assert tcp.post("/v1/vlans", json={"range": "100-101"}, headers=admin).status_code == 200
    assert (
        tcp.post("/v1/publicips", json={"range": "192.0.2.1-192.0.2.4"}, headers=admin).status_code
        == 200
    )
    yield tcp, tokens, tmp_path
    manager.close()


def wire(cvl: Path) -> dict[str, Any]:
    """What `cui start` sends for `cvl`."""
    from utility.adapters.bundles import read_bundle

    return read_bundle(cvl).to_wire()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tcp_needs_a_valid_token(setup) -> None:  # type: ignore[no-untyped-def]
    tcp, _, _ = setup
    missing = tcp.get("/v1/vaps")
    assert missing.status_code == 401 and "bearer token" in missing.get_json()["error"]
    bad = tcp.get("/v1/vaps", headers=auth("not-a-token"))
    assert bad.status_code == 401 and bad.get_json()["error"] == "invalid token"
    assert tcp.get("/v1/vaps", headers={"Authorization": "Basic x"}).status_code == 401


def test_users_cannot_administer(setup) -> None:  # type: ignore[no-untyped-def]
    tcp, tokens, tmp_path = setup
    alice = auth(tokens["alice"])
    refusals = [
        tcp.post(
            "/v1/hosts",
            json={"name": "h9", "uri": "test:///default", "memory": "1G", "max_vms": 1},
            headers=alice,
        ),
        tcp.delete("/v1/hosts/h1", headers=alice),
        tcp.post("/v1/blacklist", json={"url": "http://r/DNS", "version": "3"}, headers=alice),
        tcp.post("/v1/vlans", json={"range": "5-6"}, headers=alice),
        tcp.post("/v1/tokens", json={"name": "eve", "role": "admin"}, headers=alice),
    ]
    for answer in refusals:
        assert answer.status_code == 403, answer.get_json()
        assert "administrators" in answer.get_json()["error"]
    assert tcp.get("/v1/blacklist", headers=auth(tokens["admin"])).get_json() == []


def test_a_user_cannot_see_or_stop_another_users_vap(setup) -> None:  # type: ignore[no-untyped-def]
    tcp, tokens, tmp_path = setup
    acme = paper_tree(PAPER, tmp_path / "acme")
    alice, bob = auth(tokens["alice"]), auth(tokens["bob"])
    started = tcp.post("/v1/vaps/start", json={"bundle": wire(acme)}, headers=alice)
    assert started.status_code == 200, started.get_json()
    assert started.get_json()["owner"] == "alice"
    assert tcp.get("/v1/vaps", headers=bob).get_json() == []
    assert len(tcp.get("/v1/vaps", headers=alice).get_json()) == 1
    assert len(tcp.get("/v1/vaps", headers=auth(tokens["admin"])).get_json()) == 1
    theirs = "alice/AcmeGroupware"
    peek = tcp.get("/v1/vaps", query_string={"name": theirs}, headers=bob)
    assert peek.status_code == 404 and peek.get_json()["error"] == f"{theirs} was never started"
    stop = tcp.post("/v1/vaps/stop", json={"name": theirs}, headers=bob)
    assert stop.status_code == 404 and stop.get_json()["error"] == f"{theirs} is not running"
    mine = tcp.post("/v1/vaps/stop", json={"name": "AcmeGroupware"}, headers=alice)
    assert mine.status_code == 200


def test_bad_requests_are_clear_json_errors_not_500(setup) -> None:  # type: ignore[no-untyped-def]
    tcp, tokens, tmp_path = setup
    admin = auth(tokens["admin"])
    answers = {
        "no body": tcp.post("/v1/vaps/start", headers=admin),
        "no cvl": tcp.post("/v1/vaps/start", json={}, headers=admin),
        "bad bundle": tcp.post(
            "/v1/vaps/start",
            json={"bundle": {"root_dir": str(tmp_path), "root": "none.cvl", "files": {}}},
            headers=admin,
        ),
        "a path": tcp.post("/v1/vaps/start", json={"cvl": "/etc/x.cvl"}, headers=admin),
        "bad memory": tcp.post(
            "/v1/hosts",
            json={"name": "x", "uri": "test:///default", "memory": "lots", "max_vms": 1},
            headers=admin,
        ),
        "bad range": tcp.post("/v1/vlans", json={"range": "9-1"}, headers=admin),
        "not running": tcp.post("/v1/vaps/stop", json={"name": "nope"}, headers=admin),
        "unknown route": tcp.get("/v1/nothing", headers=admin),
        "bad host": tcp.post(
            "/v1/hosts",
            json={"name": "y", "uri": "qemu+ssh://no.invalid/x", "memory": "1G", "max_vms": 1},
            headers=admin,
        ),
    }
    for what, answer in answers.items():
        assert 400 <= answer.status_code < 500 or answer.status_code == 503, what
        assert answer.get_json()["error"], what
    assert answers["bad bundle"].status_code == 400
    assert "is not among its files" in answers["bad bundle"].get_json()["error"]
    assert "no longer accepted" in answers["a path"].get_json()["error"]
    assert answers["not running"].status_code == 404
    assert answers["bad host"].status_code == 503


def test_check_failures_list_every_problem(setup) -> None:  # type: ignore[no-untyped-def]
    tcp, tokens, tmp_path = setup
    acme = paper_tree(PAPER, tmp_path / "acme")
    admin = auth(tokens["admin"])
    tcp.post(
        "/v1/blacklist",
        json={"url": f"file://{acme.parent / 'DNS'}", "version": "all"},
        headers=admin,
    )
    tcp.post(
        "/v1/blacklist",
        json={"url": f"file://{acme.parent / 'Firewall'}", "version": "all"},
        headers=admin,
    )
    answer = tcp.post("/v1/vaps/start", json={"bundle": wire(acme)}, headers=admin)
    assert answer.status_code == 422
    assert len(answer.get_json()["problems"]) == 2


def test_the_api_never_reads_a_path_on_the_daemons_host(setup) -> None:  # type: ignore[no-untyped-def]
    tcp, tokens, tmp_path = setup
    (tmp_path / "x.cvl").write_text("X extends VANAppliance { }\n")
    answer = tcp.post(
        "/v1/vaps/start", json={"cvl": str(tmp_path / "x.cvl")}, headers=auth(tokens["alice"])
    )
    assert answer.status_code == 400 and "no longer accepted" in answer.get_json()["error"]
    assert tcp.get("/v1/vaps", headers=auth(tokens["admin"])).get_json() == []


def test_streamed_start_answers_ndjson_with_the_result_or_the_error_in_band(setup) -> None:  # type: ignore[no-untyped-def]
    import json

    tcp, tokens, tmp_path = setup
    alice = {**auth(tokens["alice"]), "Accept": "application/x-ndjson"}
    acme = paper_tree(PAPER, tmp_path / "acme")
    answer = tcp.post("/v1/vaps/start", json={"bundle": wire(acme)}, headers=alice)
    assert answer.status_code == 200 and answer.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in answer.get_data(as_text=True).splitlines()]
    assert lines[-1]["result"]["status"] == "running"  # local disks: nothing to download
    assert all("progress" in line for line in lines[:-1])
    again = tcp.post("/v1/vaps/start", json={"bundle": wire(acme)}, headers=alice)
    (error,) = [json.loads(line) for line in again.get_data(as_text=True).splitlines()]
    assert error["status"] == 409 and error["kind"] == "Conflict"
    assert "already running" in error["error"]
    plain = tcp.post("/v1/vaps/start", json={"bundle": wire(acme)}, headers=auth(tokens["alice"]))
    assert plain.status_code == 409 and plain.mimetype == "application/json"
