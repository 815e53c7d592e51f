"""`cui host drain/undrain`, `cui move` and `cui rebalance` against a daemon on test-driver hosts.

The daemon uses the real migrator; libvirt's test driver cannot migrate, so every migration
here fails, which is what this shows end to end: a failed migration leaves the VM running where
it was, the command says so and exits 1, and the drained host still takes no new VMs.
(Successful moves are shown with a stand-in migrator in `tests/unit/test_utility_moves.py`
and with a real VM between lab hosts in `test_migration_lab.py`.)
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.daemons import UtilityDaemon, run_cui
from utility.adapters.simulation import paper_tree, simulated_host_uri

PAPER = REPO_ROOT / "examples" / "paper"


def hosts_of(daemon: UtilityDaemon, cvl: Path | str) -> dict[str, tuple[str, str]]:
    status = json.loads(daemon.cui("status", str(cvl), "--json"))[0]
    return {c["path"]: (c["host"], c["state"]) for c in status["components"]}


def test_drain_with_failing_migrations_keeps_vms_and_closes_the_host(tmp_path: Path) -> None:
    with UtilityDaemon(tmp_path / "state", "--check-interval", "0") as daemon:
        daemon.provision(tmp_path, vlans="100-103", public_ips="192.0.2.10-192.0.2.13")
        uri = simulated_host_uri(tmp_path, f"h2-{tmp_path.name}")
        daemon.cui("host", "add", "h2", "--uri", uri, "--memory", "2G", "--max-vms", "8")
        acme = paper_tree(PAPER, tmp_path / "acme")
        daemon.cui("start", str(acme))
        before = hosts_of(daemon, acme)
        on_h2 = sorted(p for p, (h, _) in before.items() if h == "h2")
        assert on_h2  # spread over both hosts

        plan = daemon.cui("rebalance", "--dry-run")
        assert "nothing to do" in plan or "plan (dry run, nothing changed)" in plan
        assert hosts_of(daemon, acme) == before

        drain = run_cui("host", "drain", "h2", env=daemon.env)
        assert drain.returncode == 1, drain.stdout + drain.stderr
        assert "host h2 drained" in drain.stdout
        for path in on_h2:
            assert (
                f"local/AcmeGroupware:{path}" in drain.stderr and "still runs on h2" in drain.stderr
            )
        assert hosts_of(daemon, acme) == before  # every VM where it was, running
        listing = daemon.cui("host", "list")
        assert any(line.startswith("h2") and "drained" in line for line in listing.splitlines())

        second = paper_tree(PAPER, tmp_path / "second")
        daemon.cui("start", str(second), "--name", "second")
        assert {h for h, _ in hosts_of(daemon, "second").values()} == {"h1"}

        move = run_cui("move", str(acme), on_h2[0], "--to", "h1", env=daemon.env)
        assert move.returncode != 0 and "still runs on h2" in move.stderr
        refused = run_cui("move", str(acme), on_h2[0], "--to", "h2", env=daemon.env)
        assert refused.returncode != 0 and "already runs on h2" in refused.stderr
        assert hosts_of(daemon, acme) == before

        daemon.cui("host", "undrain", "h2")
        listing = daemon.cui("host", "list")
        assert not any("drained" in line for line in listing.splitlines())
