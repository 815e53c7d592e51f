"""`--json` on the listing commands issue 16 found without it: `cui agent list` and
`cui utility unowned` (`cui utility token add|list --json`: test_utility_ownership.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.daemons import UtilityDaemon, run_cui
from utility.adapters.simulation import simulated_host_uri


def test_agent_list_json_names_file_and_key_never_the_value(tmp_path: Path) -> None:
    env = {
        "COLLECTIVE_AGENT_FILE": str(tmp_path / "agent.enc"),
        "COLLECTIVE_AGENT_PASSWORD": "agent-pw",
    }
    cvl = tmp_path / "dir#with#hashes" / "A.cvl"
    cvl.parent.mkdir()
    cvl.write_text("")
    for key in ("l.rootpw", "d.key"):
        run_cui(
            "agent", "set", key, "--cvl", str(cvl), env=env, stdin="value-of-" + key + "\n", ok=True
        )
    listed = run_cui("agent", "list", "--json", env=env, ok=True).stdout
    rows = json.loads(listed)
    assert sorted(rows, key=lambda r: r["key"]) == [
        {"cvl": str(cvl), "key": "d.key"},
        {"cvl": str(cvl), "key": "l.rootpw"},
    ]
    assert "value-of" not in listed
    plain = run_cui("agent", "list", env=env, ok=True).stdout.split()
    assert sorted(plain) == [f"{cvl}#d.key", f"{cvl}#l.rootpw"]


def test_unowned_json_lists_a_stranger_domain_by_host_and_domain(tmp_path: Path) -> None:
    uri = simulated_host_uri(tmp_path, "h1")
    node = Path(uri.removeprefix("test://"))
    stranger = (
        "<domain type='test'><name>stranger</name><memory>1024</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    node.write_text(node.read_text().replace("</node>", stranger + "</node>"))
    state = tmp_path / "state"
    with UtilityDaemon(state) as daemon:
        assert json.loads(daemon.cui("utility", "unowned", "--json")) == []
        daemon.cui("host", "add", "h1", "--uri", uri, "--memory", "1G", "--max-vms", "2")
    with UtilityDaemon(state) as daemon:  # reconciliation at start-up finds it
        assert json.loads(daemon.cui("utility", "unowned", "--json")) == [
            {"host": "h1", "domain": "stranger"}
        ]
        assert daemon.cui("utility", "unowned") == "h1: stranger\n"
