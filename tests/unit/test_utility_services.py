"""Each service of the cluster manager built alone, with only the dependencies it names.

Real parts throughout: SQLite (`Store`), the paper's CVL evaluated by `cvl`, qemu-img disks, and
libvirt's `test:` driver as the host (no guest there, so readiness is immediate).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from utility.adapters.allocations import Allocations
from utility.adapters.bundles import BundleStore, read_bundle
from utility.adapters.cvl_adapter import Source
from utility.adapters.executor import Timeouts
from utility.adapters.libvirt_host import HostPool
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.adapters.store import HostRow, Store, VapRow
from utility.adapters.trust_policy import TrustPolicy
from utility.errors import Conflict, Forbidden, NotFound
from utility.service.allocator import Allocator
from utility.service.apply import Applier
from utility.service.desired import Settings
from utility.service.hosts import Hosts
from utility.service.pipeline import Checked, Pipeline
from utility.service.policy import Caller, Policy
from utility.service.secrets import HeldSecrets
from utility.service.status import StatusView

MiB = 1 << 20
ALICE, BOB, ROOT = Caller("alice", "user"), Caller("bob", "user"), Caller("root", "admin")


def vap_row(owner: str, name: str = "a") -> VapRow:
    return VapRow(
        id=1,
        name=f"{owner}/{name}",
        owner=owner,
        status="running",
        state=None,
        error=None,
        updated=0.0,
    )


def test_policy_alone_decides_every_kind_of_request(tmp_path: Path) -> None:
    policy = Policy()
    mine = vap_row("alice")
    policy.require_owner(ROOT, mine, NotFound("-"))
    hidden = NotFound("alice/a is not running")
    assert policy.require_owner(ALICE, mine, hidden) is mine
    with pytest.raises(NotFound) as refused:
        policy.require_owner(BOB, mine, hidden)
    assert refused.value is hidden
    assert policy.visible(BOB, [mine]) == [] and policy.visible(ROOT, [mine]) == [mine]
    for readable in ("hosts", "blacklist", "trust"):
        policy.require_read(BOB, readable)
    for guarded in ("pools", "subscriptions", "reconciliation reports"):
        with pytest.raises(Forbidden, match=f"only administrators may see the {guarded}"):
            policy.require_read(BOB, guarded)
        policy.require_read(ROOT, guarded)


def test_held_secrets_alone_remember_values_in_memory_and_only_keys_on_disk(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    with store.transaction() as db:
        vap_id = store.new_vap(db, "alice/a", "alice")
    held = HeldSecrets(store)
    held.remember(vap_id, "alice/a", {"l.rootpw": "Xyzzy-4711", "empty": ""})
    assert held.values("alice/a") == {"l.rootpw": "Xyzzy-4711", "empty": ""}
    assert b"Xyzzy-4711" not in (tmp_path / "utility.sqlite3").read_bytes()
    restarted = HeldSecrets(store)
    assert restarted.values("alice/a") == {}
    assert restarted.lost(vap_id, {}) == ["l.rootpw"]
    assert restarted.lost(vap_id, {"l.rootpw": "again"}) == []


@pytest.fixture
def built(tmp_path: Path) -> tuple[Store, Hosts, Checked, Settings]:
    """A store with one simulated host and pools, and the paper's VAP checked by `Pipeline`."""
    store = Store(tmp_path)
    hosts = Hosts(store, HostPool())
    hosts.add("h1", simulated_host_uri(tmp_path, f"h1-{tmp_path.name}"), 2048 * MiB, 8)
    store.add_vlans(list(range(100, 110)))
    store.add_public_ips(["192.0.2.10", "192.0.2.11", "192.0.2.12"])
    settings = Settings(prefix="svc")
    cvl = paper_tree(REPO_ROOT / "examples" / "paper", tmp_path / "acme")
    pipeline = Pipeline(
        store, TrustPolicy(tmp_path), settings, tmp_path / "cache", tmp_path / "run", tmp_path
    )
    bundles = BundleStore(tmp_path, store)
    bundle = bundles.save(read_bundle(cvl))
    checked = pipeline.check("alice/acme", Source(bundle), {})
    assert checked.problems == []
    yield store, hosts, checked, settings
    hosts.close()


def test_allocator_alone_reserves_exactly_its_proposal_or_conflicts(built) -> None:
    store, _, checked, settings = built
    allocator = Allocator(store, Allocations(store), settings)
    with allocator.session() as db:
        proposal = allocator.propose(db, checked.model, checked.prepared)
    assert proposal.problems == [] and set(proposal.placement.values()) == {"h1"}
    with allocator.session() as db:
        first = store.new_vap(db, "alice/first", "alice")
        allocator.reserve(db, first, proposal, checked.prepared)
    held = (store.all_addresses(), store.pools())
    # the same proposal again, for another VAP: every part of it is taken now
    with pytest.raises(Conflict), allocator.session() as db:
        second = store.new_vap(db, "bob/second", "bob")
        allocator.reserve(db, second, proposal, checked.prepared)
    assert (store.all_addresses(), store.pools()) == held
    assert store.vap_by_name("bob/second") is None  # the whole transaction rolled back


def test_applier_alone_starts_and_stops_and_records_with_its_clock(built, tmp_path: Path) -> None:
    store, hosts, checked, settings = built
    allocations = Allocations(store)
    allocator = Allocator(store, allocations, settings)
    pipeline = Pipeline(
        store, TrustPolicy(tmp_path), settings, tmp_path / "cache", tmp_path / "run", tmp_path
    )
    with allocator.session() as db:
        vap_id = store.new_vap(db, checked.name, "alice")
        proposal = allocator.propose(db, checked.model, checked.prepared)
        allocator.reserve(db, vap_id, proposal, checked.prepared)
    bases = pipeline.fetch_bases(checked.prepared)
    state = pipeline.desired_state(
        vap_id, checked, proposal.addressing, proposal.placement, bases, {}
    )
    applier = Applier(store, hosts.host, Timeouts(), tmp_path / "attic", clock=lambda: 1234.5)
    started = applier.apply(vap_id, None, state)
    assert started.outcome.ok and len(started.plan.actions) > len(state.vms)
    rows = store.vms(vap_id)
    assert {r.state for r in rows} == {"running"} and {r.started for r in rows} == {1234.5}
    assert sorted(r.boot_seq for r in rows) == list(range(1, len(rows) + 1))
    store.set_vap(vap_id, status="running", state=state)
    status = StatusView(store, clock=lambda: 1240.0).vap_status(vap_id)
    assert {c["uptime"] for c in status["components"]} == {5.5}
    stopped = applier.apply(vap_id, state, None, keep_going=True)
    assert stopped.outcome.ok
    assert {r.state for r in store.vms(vap_id)} == {"stopped"}
    assert [d.name for d in hosts.host("h1").domains() if d.name.startswith("svc-")] == []


def test_hosts_alone_register_the_embedded_host_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    hosts = Hosts(store, HostPool(), default_uri="test:///default")
    assert hosts.ensure_default() == [
        "no host registered: using embedded default host test:///default"
    ]
    assert hosts.ensure_default() == []
    assert store.hosts() == [HostRow("local", "test:///default", store.hosts()[0].memory, 16, True)]
    hosts.close()
