"""The runnable Groupware (examples/appliances/Groupware) declares the paper's Figure 5
parameter set, and AcmeGroupware sets exactly those 14: ten in the file, the four sensitive
ones through the user agent (here as overrides, as the agent supplies them)."""

from __future__ import annotations

from pathlib import Path

import cvl
from scripts.groupware_network import FIGURE5
from scripts.groupware_network import SECRETS as LAB_SECRETS

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / "examples" / "appliances" / "Groupware" / "AcmeGroupware.cvl"
SENSITIVE = set(LAB_SECRETS)  # the four sensitive ones of Figure 5
SECRETS = {key: f"secret-{key}" for key in SENSITIVE}


def test_the_user_sets_the_14_parameters_and_nothing_else_is_missing() -> None:
    model = cvl.evaluate_file(str(ACME), overrides=SECRETS)
    root = model.to_json()["components"][""]
    assert set(root["params"]) - {"vanIF", "defaultroute", "name"} == FIGURE5
    assert set(root["sensitive"]) == SENSITIVE
    assert set(root["required"]) >= SENSITIVE | {"domain"}
    assert cvl.check_file(str(ACME), overrides=SECRETS) == []


def test_without_the_agent_only_the_four_sensitive_values_are_missing() -> None:
    errors = cvl.check_file(str(ACME))
    assert sorted(e.path for e in errors) == sorted(SENSITIVE)
    assert all(e.sensitive for e in errors)


def test_every_appliance_gets_its_share_of_figure_5() -> None:
    data = cvl.evaluate_file(str(ACME), overrides=SECRETS).to_json(reveal=True)["components"]
    shared = {c: FIGURE5 & set(v["params"]) for c, v in data.items() if v["kind"] == "vm"}
    assert shared == {
        "h": {"hostname", "domain", "rootpw"},
        "d": {"hostname", "domain", "forwarders", "rootpw"},
        "l": {
            "domain",
            "rootdnpass",
            "proxypw",
            "smtppw",
            "country",
            "state",
            "city",
            "org",
            "ou",
            "certemail",
            "rootpw",
        },
        "m": {"domain", "proxypw", "smtppw", "defmailhost", "rootpw"},
        "w": {"domain", "rootpw"},
        "f": {"rootpw"},
    }
    assert sum(map(len, shared.values())) == 26  # the paper's appliances needed 30
    # the sensitive values reach only the components that declare them sensitive
    for comp, row in data.items():
        for key in SENSITIVE & set(row["params"]):
            assert key in row["sensitive"], (comp, key)
    assert data["m"]["params"]["proxypw"] == [SECRETS["proxypw"]]
    assert data["l"]["params"]["country"] == ["US"]
