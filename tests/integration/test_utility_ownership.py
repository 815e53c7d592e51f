"""Ownership attacks on a real daemon (`cui utility serve --listen`, test-driver host): two user
tokens, alice and bob, through `cui` and the HTTP API (issue 12, item 2).

Each attack is reproduced as bob (or with a hostile token name) and must be refused with the
same answer a VAP that never existed gives, and alice's VAP must be unchanged afterwards: its
record, VMs and every allocation read straight from the state database through `Store`.
"""

from __future__ import annotations

import base64
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

    def snapshot(self, name: str = "alice/AcmeGroupware") -> dict[str, Any]:
        """Everything of VAP `name` in the state database, and every allocation."""
        vap = self.store.vap_by_name(name)
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


THEIRS, NOTHING = "alice/AcmeGroupware", "alice/Nothing"


def same_refusal(theirs: str, nothing: str) -> None:
    """`theirs` (about another user's VAP) is `nothing` (about a VAP never started) word for
    word, the name aside, and names no owner."""
    assert theirs.replace(THEIRS, "NAME") == nothing.replace(NOTHING, "NAME")
    assert names_nobody(theirs)


def names_nobody(text: str, asked: str = THEIRS) -> bool:
    """Whether `text`, the name it was asked about aside, names neither alice nor any owner."""
    rest = text.replace(asked, "NAME")
    return "alice" not in rest and "another" not in rest and "owner" not in rest


def start_as_alice(cluster: Cluster, tmp_path: Path) -> Path:
    acme = paper_tree(PAPER, tmp_path / "alice")
    started = cluster.cui("alice", "start", str(acme), "--json")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["owner"] == "alice"
    return acme


def test_bob_can_neither_see_nor_touch_alices_vap(cluster: Cluster, tmp_path: Path) -> None:
    acme = start_as_alice(cluster, tmp_path)
    before = cluster.snapshot()
    vap_id = before["vap"][0]

    assert json.loads(cluster.cui("bob", "status", "--json").stdout) == []
    for command in (["status"], ["stop"], ["update"], ["update", "--dry-run"], ["show"]):
        theirs = refusal(cluster.cui("bob", *command, THEIRS))
        nothing = refusal(cluster.cui("bob", *command, NOTHING))
        same_refusal(theirs, nothing)
    # alice's file as bob's: his own name, a VAP he never started (nothing of alice's)
    own = refusal(cluster.cui("bob", "status", str(acme)))
    assert own.strip() == "error: AcmeGroupware was never started"
    stop_one = refusal(cluster.cui("bob", "stop", THEIRS, "d"))
    assert "not running" in stop_one and names_nobody(stop_one)
    assert json.loads(cluster.cui("bob", "history", "--json").stdout) == []
    assert json.loads(cluster.cui("bob", "history", str(acme), "--json").stdout) == []

    for method, path, body in (
        ("GET", "/v1/vaps", {"params": {"name": THEIRS}}),
        ("GET", "/v1/vaps/bundle", {"params": {"name": THEIRS}}),
        ("POST", "/v1/vaps/stop", {"json": {"name": THEIRS}}),
        ("POST", "/v1/vaps/update", {"json": {"name": THEIRS, "dry_run": True}}),
        ("POST", "/v1/vaps/stop", {"json": {"name": THEIRS, "component": "d"}}),
    ):
        answer = cluster.http("bob", method, path, **body)
        assert answer.status_code == 404, answer.text
        assert names_nobody(answer.text)

    page = cluster.http("bob", "GET", f"/ui/vaps/{vap_id}")
    nowhere = cluster.http("bob", "GET", "/ui/vaps/99999")
    assert page.status_code == nowhere.status_code == 404
    assert page.json()["error"] == f"no VAP with id {vap_id}"
    assert nowhere.json()["error"] == "no VAP with id 99999"
    for listing in ("/ui/", "/ui/history", "/ui/blacklist"):
        html = cluster.http("bob", "GET", listing, headers={"Accept": "text/html"}).text
        assert "AcmeGroupware" not in html and str(acme.parent) not in html, listing

    assert cluster.snapshot() == before
    # alice and the administrator still see and control it
    assert json.loads(cluster.cui("alice", "status", str(acme), "--json").stdout)[0]["owner"] == (
        "alice"
    )
    assert json.loads(cluster.cui("admin", "status", THEIRS, "--json").stdout)[0]["id"] == vap_id
    everything = json.loads(cluster.cui("admin", "status", "--json").stdout)
    assert [v["owner"] for v in everything] == ["alice"]
    assert cluster.http("admin", "GET", f"/ui/vaps/{vap_id}").status_code == 200
    for listing in ("/ui/",):  # what bob's page lacked is there for the administrator
        html = cluster.http("admin", "GET", listing, headers={"Accept": "text/html"}).text
        assert "AcmeGroupware" in html, listing


def test_bob_starting_alices_cvl_gets_his_own_vap_never_hers(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The old attack: bob started alice's CVL path (running or stopped) and ran on her data
    disks. Now a VAP is (owner, name): bob's start of the same file, or of a link to it, is his
    own VAP with its own storage; alice's record, VMs and allocations do not change."""
    acme = start_as_alice(cluster, tmp_path)
    before = cluster.snapshot()
    link = tmp_path / "bobs" / "AcmeGroupware.cvl"  # the same file under a path of bob's
    link.parent.mkdir()
    link.symlink_to(acme)
    started = cluster.cui("bob", "start", str(link), "--json")
    assert started.returncode == 0, started.stderr
    bobs = json.loads(started.stdout)
    assert (bobs["name"], bobs["owner"]) == ("AcmeGroupware", "bob")
    assert bobs["id"] != before["vap"][0]
    after = cluster.snapshot()
    assert (after["vap"], after["vms"]) == (before["vap"], before["vms"])
    assert len({a[0] for a in after["addresses"]}) == len(after["addresses"])  # none shared
    mine = {a for a in cluster.snapshot()["addresses"] if a[2] == before["vap"][0]}
    assert mine == {a for a in before["addresses"] if a[2] == before["vap"][0]}
    state = cluster.daemon.state
    alice_disks = {p.name for p in (state / "vaps" / str(before["vap"][0])).iterdir()}
    assert alice_disks == {"d", "f", "l"}
    assert (state / "vaps" / str(bobs["id"]) / "d").is_dir()
    assert not (acme.parent / "d").exists()  # nothing is ever written next to a user's file
    # both stop their own; alice's stopped VAP (data disks kept) starts again as hers
    assert cluster.cui("bob", "stop", "AcmeGroupware").returncode == 0
    assert cluster.cui("alice", "stop", "AcmeGroupware").returncode == 0
    assert cluster.cui("alice", "start", str(acme)).returncode == 0
    assert cluster.snapshot()["vap"][:3] == (before["vap"][0], "alice", "running")
    assert cluster.snapshot("bob/AcmeGroupware")["vap"][1:3] == ("bob", "stopped")


def test_a_users_bundle_naming_files_outside_itself_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Attack: bob's CVL imports `file:` directories of the daemon's host (alice's appliance,
    /etc): refused through cui and the API, and nothing changes."""
    acme = start_as_alice(cluster, tmp_path)
    before = cluster.snapshot()
    hostile = tmp_path / "bob" / "steal.cvl"
    hostile.parent.mkdir()
    hostile.write_text(
        f'import {{ url => "file:{acme.parent / "DNS"}", cvl => "DNS.cvl" }} D;\n'
        'Steal extends D { domain = "x"; }\n'
    )
    done = refusal(cluster.cui("bob", "start", str(hostile)))
    assert "outside the submitted bundle" in done and "reads no file of its own" in done
    wire = {
        "root_dir": "/etc",
        "root": "w.cvl",
        "files": {
            "w.cvl": base64.b64encode(
                b'import { url => "file:/etc", cvl => "passwd" } P;\nW extends P { }\n'
            ).decode()
        },
    }
    answer = cluster.http("bob", "POST", "/v1/vaps/start", json={"bundle": wire})
    assert answer.status_code == 422 and "no file passwd in the submitted bundle" in answer.text
    assert "root:" not in answer.text  # nothing of /etc/passwd comes back
    assert cluster.snapshot() == before
    assert json.loads(cluster.cui("bob", "status", "--json").stdout) == []


def test_cui_show_prints_the_bundle_that_runs(cluster: Cluster, tmp_path: Path) -> None:
    acme = start_as_alice(cluster, tmp_path)
    shown = json.loads(cluster.cui("alice", "show", "AcmeGroupware", "--json").stdout)
    assert shown["texts"]["AcmeGroupware.cvl"] == acme.read_text()
    assert "Groupware/Groupware.cvl" in shown["files"] and len(shown["versions"]) == 1
    text = cluster.cui("alice", "show", "AcmeGroupware").stdout
    assert text.startswith("AcmeGroupware (owner alice, running): bundle ")
    assert 'domain = "acme.org";' in text
    # the same file under another name: a second VAP of alice's, the very same stored bundle
    named = cluster.cui("alice", "start", str(acme), "--name", "web", "--json")
    assert named.returncode == 0, named.stderr
    assert (json.loads(named.stdout)["name"], json.loads(named.stdout)["owner"]) == ("web", "alice")
    web = json.loads(cluster.cui("alice", "show", "web", "--json").stdout)
    assert web["digest"] == shown["digest"]
    assert "not allowed" in refusal(cluster.cui("alice", "start", str(acme), "--name", "../x"))
    assert cluster.cui("alice", "stop", "web").returncode == 0
    acme.write_text(acme.read_text().replace("acme.org", "acme.example"))
    updated = cluster.cui("alice", "update", "AcmeGroupware", str(acme))
    assert updated.returncode == 0, updated.stderr
    again = json.loads(cluster.cui("alice", "show", "AcmeGroupware", "--json").stdout)
    assert [v["seq"] for v in again["versions"]] == [1, 2]
    assert "acme.example" in again["texts"]["AcmeGroupware.cvl"]


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

    before = cluster.snapshot()
    assert cluster.cui("alice", "status", str(acme)).returncode == 0
    revoked = cluster.cui("admin", "utility", "token", "revoke", "alice")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert "invalid token" in refusal(cluster.cui("alice", "status", str(acme)))
    assert cluster.http("alice", "GET", "/v1/vaps").status_code == 401
    assert cluster.http("alice", "GET", "/ui/").status_code == 401
    assert "no token named alice" in refusal(
        cluster.cui("admin", "utility", "token", "revoke", "alice")
    )
    assert cluster.snapshot() == before  # revoking a token stops nothing
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
        return (
            store.vap_by_name("local/AcmeGroupware"),
            store.vms(started["id"]),
            store.all_addresses(),
        )

    made = run_cui("utility", "token", "add", "local", "--state", str(state))
    assert made.returncode == 1 and "reserved" in made.stderr
    store.add_token("local", "user", "old-local-token")  # as a database from before holds it
    with UtilityDaemon(state, tcp=True) as tcp_daemon:
        before = snapshot()  # after the restart's reconciliation (test-driver VMs die with it)
        headers = {"Authorization": "Bearer old-local-token"}
        for method, path, body in (
            ("GET", "/v1/vaps", None),
            ("POST", "/v1/vaps/stop", {"name": "local/AcmeGroupware"}),
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
