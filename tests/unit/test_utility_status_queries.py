"""`status` of every VAP reads the database a fixed number of times, however many VAPs exist."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO_ROOT
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.service.manager import Caller, ClusterManager

ADMIN = Caller("root", "admin")
PAPER = REPO_ROOT / "examples" / "paper"


def _statements(manager: ClusterManager) -> tuple[list[dict[str, object]], int]:
    """The status of all VAPs and how many SQL statements it took."""
    seen: list[str] = []
    db = manager.store.read()
    db.set_trace_callback(seen.append)
    try:
        status = manager.status(ADMIN)
    finally:
        db.set_trace_callback(None)
    return status, len(seen)


def _timeless(status: dict[str, object]) -> dict[str, object]:
    components = [
        {k: v for k, v in c.items() if k != "uptime"}
        for c in status["components"]  # type: ignore[attr-defined]
    ]
    return {**status, "components": components}


def test_status_of_all_vaps_takes_the_same_queries_for_1_or_4_vaps(tmp_path: Path) -> None:
    manager = ClusterManager(tmp_path / "state")
    uri = simulated_host_uri(tmp_path, "h1", memory_mib=8192)
    manager.add_host(ADMIN, "h1", uri, 8 << 30, 16)
    manager.add_vlans(ADMIN, "100-107")
    manager.add_public_ips(ADMIN, "198.51.100.1-198.51.100.8")
    counts = []
    for n in range(4):
        manager.start(ADMIN, str(paper_tree(PAPER, tmp_path / f"acme{n}")), name=f"acme{n}")
        status, count = _statements(manager)
        assert len(status) == n + 1
        assert {c["state"] for s in status for c in s["components"]} == {"running"}
        assert all(s["restart"] == "always" for s in status)
        counts.append(count)
    manager.stop(ADMIN, "acme0")
    status, count = _statements(manager)
    assert [s["status"] for s in status] == ["stopped", "running", "running", "running"]
    assert len(set(counts + [count])) == 1, counts + [count]  # one query per kind, not per VAP
    (single,) = manager.status(ADMIN, "acme2")
    (same,) = [s for s in status if s["vap"] == single["vap"]]
    assert _timeless(single) == _timeless(same)  # one VAP's status reads the same either way
    manager.close()
