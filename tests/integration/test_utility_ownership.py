"""Ownership attacks on a real daemon (`cui utility serve --listen`, test-driver host): two user
tokens, alice and bob, through `cui` and the HTTP API (issue 12, item 2).

Each attack is reproduced as bob (or with a hostile token name) and must be refused with the
same answer a VAP that never existed gives, and alice's VAP must be unchanged afterwards: its
record, VMs and every allocation read straight from the state database through `Store`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO_ROOT
from tests.daemons import UtilityDaemon, run_cui
from utility.adapters.simulation import paper_tree
from utility.adapters.store import Store

PAPER = REPO_ROOT / "examples" / "paper"


class Cluster:
    """A TCP daemon with one host, pools, and tokens for alice and bob."""

    def __init__(self, tmp_path: Path) -> None:
        self.daemon = UtilityDaemon(tmp_path / "state", tcp=True)
        self.daemon.provision(tmp_path, vlans="100-103", public_ips="192.0.2.10-192.0.2.13")
        self.tokens = {"admin": self.daemon.token}
        for name in ("alice", "bob"):
            made = json.loads(self.daemon.cui("utility", "token", "add", name, "--json"))
            assert made["name"] == name and made["role"] == "user"
            self.tokens[name] = made["token"]
        self.store = Store(self.daemon.state)

    def cui(self, who: str, *args: str) -> Any:
        """`cui ARGS` as `who` (not required to succeed)."""
        env = {"COLLECTIVE_UTILITY": self.daemon.url, "COLLECTIVE_TOKEN": self.tokens[who]}
        return run_cui(*args, env=env)

    def http(self, who: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An API call as `who`."""
        headers = {"Authorization": f"Bearer {self.tokens[who]}", **kwargs.pop("headers", {})}
        return requests.request(
            method, self.daemon.url + path, headers=headers, timeout=60, **kwargs
        )

    def snapshot(self, cvl: Path) -> dict[str, Any]:
        """Everything of the VAP of `cvl` in the state database, and every allocation."""
        vap = self.store.vap_by_path(str(cvl))
        assert vap is not None
        return {
            "vap": (vap.id, vap.owner, vap.status, vap.state, vap.error),
            "vms": self.store.vms(vap.id),
            "pools": self.store.pools(),
            "addresses": sorted(self.store.all_addresses()),
        }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    yield made
    made.daemon.kill()


def refusal(done: Any) -> str:
    """The message of a failed `cui` (exit code 1), with nothing else on standard output."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    return str(done.stderr)


def same_refusal(theirs: str, nothing: str, cvl: Path, missing: Path) -> None:
    """`theirs` (about another user's VAP) is `nothing` (about a path never used) word for word,
    the path aside, and names no owner."""
    assert theirs.replace(str(cvl), "PATH") == nothing.replace(str(missing), "PATH")
    assert names_nobody(theirs, cvl)


def names_nobody(text: str, cvl: Path) -> bool:
    """Whether `text`, the path it was asked about aside, names neither alice nor any owner."""
    rest = text.replace(str(cvl), "PATH").replace(json.dumps(str(cvl))[1:-1], "PATH")
    return "alice" not in rest and "another" not in rest and "owner" not in rest


def start_as_alice(cluster: Cluster, tmp_path: Path) -> Path:
    acme = paper_tree(PAPER, tmp_path / "alice")
    started = cluster.cui("alice", "start", str(acme), "--json")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["owner"] == "alice"
    return acme


def test_bob_can_neither_see_nor_touch_alices_vap(cluster: Cluster, tmp_path: Path) -> None:
    acme = start_as_alice(cluster, tmp_path)
    missing = paper_tree(PAPER, tmp_path / "nobody")  # a real file no VAP ever used
    before = cluster.snapshot(acme)
    vap_id = before["vap"][0]

    assert json.loads(cluster.cui("bob", "status", "--json").stdout) == []
    for command in (
        ["status"],
        ["stop"],
        ["update"],
        ["update", "--dry-run"],
    ):
        theirs = refusal(cluster.cui("bob", *command, str(acme)))
        nothing = refusal(cluster.cui("bob", *command, str(missing)))
        same_refusal(theirs, nothing, acme, missing)
    stop_one = refusal(cluster.cui("bob", "stop", str(acme), "d"))
    assert "not running" in stop_one and names_nobody(stop_one, acme)
    assert json.loads(cluster.cui("bob", "history", "--json").stdout) == []
    assert json.loads(cluster.cui("bob", "history", str(acme), "--json").stdout) == []

    for method, path, body in (
        ("GET", "/v1/vaps", {"params": {"cvl": str(acme)}}),
        ("POST", "/v1/vaps/stop", {"json": {"cvl": str(acme)}}),
        ("POST", "/v1/vaps/update", {"json": {"cvl": str(acme), "dry_run": True}}),
        ("POST", "/v1/vaps/stop", {"json": {"cvl": str(acme), "component": "d"}}),
    ):
        answer = cluster.http("bob", method, path, **body)
        assert answer.status_code == 404, answer.text
        assert names_nobody(answer.text, acme)

    page = cluster.http("bob", "GET", f"/ui/vaps/{vap_id}")
    nowhere = cluster.http("bob", "GET", "/ui/vaps/99999")
    assert page.status_code == nowhere.status_code == 404
    assert page.json()["error"] == f"no VAP with id {vap_id}"
    assert nowhere.json()["error"] == "no VAP with id 99999"
    for listing in ("/ui/", "/ui/history", "/ui/blacklist"):
        html = cluster.http("bob", "GET", listing, headers={"Accept": "text/html"}).text
        assert "AcmeGroupware" not in html and str(acme.parent) not in html, listing

    assert cluster.snapshot(acme) == before
    # alice and the administrator still see and control it
    assert json.loads(cluster.cui("alice", "status", str(acme), "--json").stdout)[0]["owner"] == (
        "alice"
    )
    everything = json.loads(cluster.cui("admin", "status", "--json").stdout)
    assert [v["owner"] for v in everything] == ["alice"]
    assert cluster.http("admin", "GET", f"/ui/vaps/{vap_id}").status_code == 200
    for listing in ("/ui/",):  # what bob's page lacked is there for the administrator
        html = cluster.http("admin", "GET", listing, headers={"Accept": "text/html"}).text
        assert "AcmeGroupware" in html, listing


def test_bob_cannot_start_alices_cvl_path_running_or_stopped(
    cluster: Cluster, tmp_path: Path
) -> None:
    acme = start_as_alice(cluster, tmp_path)
    before = cluster.snapshot(acme)
    taken = refusal(cluster.cui("bob", "start", str(acme)))
    assert "no such CVL file of yours" in taken and names_nobody(taken, acme)
    assert "running" not in taken  # the refusal does not tell it runs
    link = tmp_path / "bobs" / "Mine.cvl"  # the same file under a name of bob's
    link.parent.mkdir()
    link.symlink_to(acme)
    via_link = refusal(cluster.cui("bob", "start", str(link)))
    assert "no such CVL file of yours" in via_link and names_nobody(via_link, acme)
    assert cluster.snapshot(acme) == before

    assert cluster.cui("alice", "stop", str(acme)).returncode == 0
    stopped = cluster.snapshot(acme)
    assert stopped["vap"][2] == "stopped"
    again = refusal(cluster.cui("bob", "start", str(acme)))
    assert again == taken  # stopped with its data disks kept: still alice's
    answer = cluster.http("bob", "POST", "/v1/vaps/start", json={"cvl": str(acme)})
    assert answer.status_code == 404 and names_nobody(answer.text, acme)
    assert cluster.snapshot(acme) == stopped
    # alice starts her own file again
    assert cluster.cui("alice", "start", str(acme)).returncode == 0
    assert cluster.snapshot(acme)["vap"][1:3] == ("alice", "running")


def test_reserved_and_malformed_token_names_are_refused(cluster: Cluster) -> None:
    names = [
        t["name"]
        for t in json.loads(cluster.cui("admin", "utility", "token", "list", "--json").stdout)
    ]
    for hostile in ("local", "auto-update", "Local", "bob\nlocal", "", "x" * 64, "-a", "a b"):
        done = cluster.cui("admin", "utility", "token", "add", hostile)
        assert done.returncode != 0, hostile
        answer = cluster.http("admin", "POST", "/v1/tokens", json={"name": hostile})
        assert answer.status_code in (400, 422), (hostile, answer.text)
    for reserved in ("local", "auto-update"):
        answer = cluster.http("admin", "POST", "/v1/tokens", json={"name": reserved})
        assert "reserved" in answer.json()["error"]
    after = json.loads(cluster.cui("admin", "utility", "token", "list", "--json").stdout)
    assert [t["name"] for t in after] == names


def test_tokens_are_listed_without_secrets_and_revocation_is_immediate(
    cluster: Cluster, tmp_path: Path
) -> None:
    acme = start_as_alice(cluster, tmp_path)
    listing = cluster.cui("admin", "utility", "token", "list", "--json")
    rows = json.loads(listing.stdout)
    assert [(r["name"], r["role"]) for r in rows] == [
        ("admin", "admin"),
        ("alice", "user"),
        ("bob", "user"),
    ]
    assert all(set(r) == {"name", "role", "created"} and r["created"] > 0 for r in rows)
    for token in cluster.tokens.values():
        assert token not in listing.stdout
    table = cluster.cui("admin", "utility", "token", "list").stdout
    assert re.search(r"^alice\s+user\s+\d{4}-\d\d-\d\d ", table, re.M)
    assert refusal(cluster.cui("bob", "utility", "token", "list")).count("administrators") == 1
    assert cluster.http("bob", "DELETE", "/v1/tokens/alice").status_code == 403

    before = cluster.snapshot(acme)
    assert cluster.cui("alice", "status", str(acme)).returncode == 0
    revoked = cluster.cui("admin", "utility", "token", "revoke", "alice")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert "invalid token" in refusal(cluster.cui("alice", "status", str(acme)))
    assert cluster.http("alice", "GET", "/v1/vaps").status_code == 401
    assert cluster.http("alice", "GET", "/ui/").status_code == 401
    assert "no token named alice" in refusal(
        cluster.cui("admin", "utility", "token", "revoke", "alice")
    )
    assert cluster.snapshot(acme) == before  # revoking a token stops nothing
    names = [
        r["name"]
        for r in json.loads(cluster.cui("admin", "utility", "token", "list", "--json").stdout)
    ]
    assert names == ["admin", "bob"]


def test_a_token_named_local_never_becomes_the_unix_sockets_caller(tmp_path: Path) -> None:
    """The attack: the socket's caller is `local`; a TCP token of that name owned its VAPs.
    Such a token cannot be made any more, and one an older database holds is refused."""
    state = tmp_path / "state"
    with UtilityDaemon(state) as socket_daemon:
        assert socket_daemon.socket.stat().st_mode & 0o777 == 0o600  # the administrator's door
        socket_daemon.provision(tmp_path, vlans="100-103", public_ips="192.0.2.10-192.0.2.13")
        acme = paper_tree(PAPER, tmp_path / "mine")
        started = json.loads(socket_daemon.cui("start", str(acme), "--json"))
        assert started["owner"] == "local"
    store = Store(state)

    def snapshot() -> tuple[Any, ...]:
        return (store.vap_by_path(str(acme)), store.vms(started["id"]), store.all_addresses())

    made = run_cui("utility", "token", "add", "local", "--state", str(state))
    assert made.returncode == 1 and "reserved" in made.stderr
    store.add_token("local", "user", "old-local-token")  # as a database from before holds it
    with UtilityDaemon(state, tcp=True) as tcp_daemon:
        before = snapshot()  # after the restart's reconciliation (test-driver VMs die with it)
        headers = {"Authorization": "Bearer old-local-token"}
        for method, path, body in (
            ("GET", "/v1/vaps", None),
            ("POST", "/v1/vaps/stop", {"cvl": str(acme)}),
        ):
            answer = requests.request(
                method, tcp_daemon.url + path, json=body, headers=headers, timeout=60
            )
            assert answer.status_code == 401 and answer.json()["error"] == "invalid token"
        env = {"COLLECTIVE_UTILITY": tcp_daemon.url, "COLLECTIVE_TOKEN": "old-local-token"}
        assert "invalid token" in refusal(run_cui("stop", str(acme), env=env))
        # the administrator still sees it, owned by the socket's caller
        assert [v["owner"] for v in tcp_daemon.api("GET", "/v1/vaps")] == ["local"]
        assert snapshot() == before
