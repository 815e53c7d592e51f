"""Restart policy and `host dead` through `cui` against a daemon on a simulated host.

(Crashes and unreachable hosts need a hand inside the daemon's process, so they are shown through
the HTTP API in `tests/unit/test_utility_watchdog.py` and on a real VM in
`test_utility_restart_vm.py`.)
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.daemons import UtilityDaemon, run_cui
from utility.adapters.simulation import paper_tree
from utility.adapters.store import Store

PAPER = REPO_ROOT / "examples" / "paper"


def test_restart_policy_shows_and_host_dead_releases_and_is_recorded(tmp_path: Path) -> None:
    with UtilityDaemon(tmp_path / "state", "--check-interval", "0.2") as daemon:
        daemon.provision(tmp_path, public_ips="192.0.2.10-192.0.2.11")
        acme = paper_tree(PAPER, tmp_path / "acme")
        env = daemon.env
        bad = run_cui("start", str(acme), "--restart", "sometimes", env=env)
        assert bad.returncode == 2 and "sometimes" in bad.stderr
        daemon.cui("start", str(acme), "--restart", "never")
        shown = daemon.cui("status", str(acme))
        assert "restart never" in shown
        status = json.loads(daemon.cui("status", str(acme), "--json"))[0]
        assert status["restart"] == "never"
        assert {c["state"] for c in status["components"]} == {"running"}
        store = Store(tmp_path / "state")
        assert {a[2] for a in store.all_addresses()} == {status["id"]}

        out = daemon.cui("host", "dead", "h1")
        assert "host h1 declared dead: 3 VM(s) lost" in out
        status = json.loads(daemon.cui("status", str(acme), "--json"))[0]
        assert {c["state"] for c in status["components"]} == {"dead"}
        hosts = json.loads(daemon.cui("host", "list", "--json"))
        assert hosts[0]["vms"] == 0 and hosts[0]["used_memory"] == 0
        history = json.loads(daemon.cui("history", str(acme), "--json"))
        assert any(h["trigger"] == "host-dead" for h in history)
        # a dead VM is never restarted, and its VAP still stops cleanly (nothing pending)
        assert "stopped" in daemon.cui("stop", str(acme))
        assert store.all_addresses() == []
        assert [v for v in store.pools()["vlans"] if v["vap_id"] is not None] == []
        missing = run_cui("host", "dead", "nosuch", env=env)
        assert missing.returncode != 0 and "no host named nosuch" in missing.stderr
