"""Utility-assigned parameters (an interface's mac, ip, subnet, netmask) are the utility's alone.

Each attack builds the hostile input itself (CVL text, an import, `--set`, a secret passed as an
override) and asserts the refusal (position, path) and that nothing was produced: no model.
Only the explicit `assigned=` channel (the utility's second evaluation) fills these parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import cvl
from cui.main import cli
from cvl.errors import CvlAssignedError, CvlError, CvlOverrideError
from cvl.model import UTILITY_ASSIGNED_INTERFACE_PARAMS

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / "examples" / "paper" / "AcmeGroupware.cvl"
APPLIANCES = ROOT / "examples" / "appliances"

VM = 'VM1 extends VMAppliance { Interface ethernet1; vm = "a.vmx"; }\n'


class NoImports:
    def fetch(self, url: str, cvl_name: str, version: str | None, base_dir: str | None):
        raise cvl.CvlError(f"no imports here ({url})")


def analyse(text: str, **kwargs) -> cvl.Analysis:
    return cvl.analyse_text(text, "t.cvl", resolver=NoImports(), base_dir="/nonexistent", **kwargs)


def refused(analysis: cvl.Analysis) -> CvlAssignedError:
    """The one error of an analysis, which must be a refusal; no model may come out."""
    assert analysis.model is None
    assert len(analysis.errors) == 1, [e.render() for e in analysis.errors]
    error = analysis.errors[0]
    assert isinstance(error, CvlAssignedError), error.render()
    return error


# -- CVL text ----------------------------------------------------------------------------------


@pytest.mark.parametrize("param", sorted(UTILITY_ASSIGNED_INTERFACE_PARAMS))
def test_cvl_assignment_to_an_assigned_parameter_is_refused_at_its_position(param):
    text = VM + f'V extends VANAppliance {{\n  VM1 d;\n  d.ethernet0.{param} = "203.0.113.9";\n'
    text += '  vanIF = "d.ethernet0";\n}\n'
    error = refused(analyse(text))
    assert error.path == f"d.ethernet0.{param}"
    assert (error.file, error.line, error.col) == ("t.cvl", 4, 3)
    assert error.render().splitlines() == [
        f"t.cvl:4:3: error: cannot assign d.ethernet0.{param}: an interface's mac, ip, subnet and "
        "netmask are assigned by the Collective Utility when the appliance starts; CVL may read "
        f"it (x = d.ethernet0.{param};) but not set it",
        f'      d.ethernet0.{param} = "203.0.113.9";',
        "      ^",
    ]


def test_any_interface_at_any_depth_and_any_form_of_value_is_refused():
    text = (
        VM + 'W extends VANAppliance { VM1 f; vanIF = "f.ethernet1"; }\n'
        "V extends VANAppliance {\n"
        "  var other;\n"
        "  W g;\n"
        '  other = "10.0.0.1";\n'
        "  g.f.ethernet1.ip = other;\n"
        '  g.f.ethernet0.mac = { a => "b" };\n'
        '  vanIF = "g";\n'
        "}\n"
    )
    analysis = analyse(text)
    assert analysis.model is None
    found = [(e.path, e.line) for e in analysis.errors if isinstance(e, CvlAssignedError)]
    assert found == [("g.f.ethernet1.ip", 7), ("g.f.ethernet0.mac", 8)]


def test_an_interface_setting_its_own_address_is_reported_once_for_all_its_uses():
    text = (
        'Nic extends Interface { ip = "10.9.9.9"; }\n'
        'VM2 extends VMAppliance { Nic ethernet1; vm = "a.vmx"; }\n'
        'V extends VANAppliance { VM2 a; VM2 b; VM2 c; vanIF = "a.ethernet0"; }\n'
    )
    error = refused(analyse(text))
    assert (error.line, error.col, error.path) == (1, 25, "a.ethernet1.ip")


def test_an_imported_appliance_cannot_set_an_address_either(tmp_path):
    (tmp_path / "Fw").mkdir()
    (tmp_path / "Fw" / "Fw.cvl").write_text(
        'CVL = "0.8";\nFw extends VMAppliance {\n  Interface ethernet1;\n  vm = "fw.xml";\n'
        '  ethernet1.ip = "198.51.100.7";  // a fixed public IP\n}\n'
    )
    user = tmp_path / "user.cvl"
    user.write_text('import { url => "file:Fw", cvl => "Fw.cvl" } Fw;\nMine extends Fw { }\n')
    error = refused(cvl.analyse_file(user))
    assert error.path == "ethernet1.ip"
    assert (error.file, error.line, error.col) == (str(tmp_path / "Fw" / "Fw.cvl"), 5, 3)
    assert [str(site) for site in error.chain] == [f"{user}:1:1"]


def test_parameters_that_merely_share_a_name_are_not_the_utility_s():
    model = analyse(
        'A extends VMAppliance { var ip, mac; vm = "a.vmx"; ip = "x"; mac = "y"; }'
    ).model
    assert model is not None
    assert model.value("ip") == ("x",) and model.value("mac") == ("y",)
    assert "ethernet0.ip" in model.pending


def test_name_stays_a_cvl_parameter_with_a_default():
    model = analyse(VM + 'V extends VANAppliance { VM1 w; w.name = "www"; vanIF = "w.ethernet0"; }')
    assert model.model is not None and model.model.value("w.name") == ("www",)


# -- overrides: --set and secrets --------------------------------------------------------------


@pytest.mark.parametrize("param", sorted(UTILITY_ASSIGNED_INTERFACE_PARAMS))
def test_an_override_of_an_assigned_parameter_is_refused_with_its_path(param):
    path = f"d.ethernet0.{param}"
    error = refused(cvl.analyse_file(ACME, overrides={path: "192.0.2.66"}))
    assert error.path == path and error.line == 0
    assert error.render() == (
        f"--set {path}: error: cannot set {path}: an interface's mac, ip, subnet and netmask are "
        "assigned by the Collective Utility when the appliance starts; overrides and secrets "
        "cannot set it"
    )


def test_a_secret_aimed_at_another_vap_s_address_is_refused_and_names_only_the_path():
    """The utility passes the user's `secrets` map as overrides: the same refusal applies."""
    secrets = {"f.ethernet1.ip": "192.0.2.10", "f.ethernet1.mac": "52:54:00:00:00:01"}
    analysis = cvl.analyse_file(ACME, overrides=secrets)
    assert analysis.model is None
    assert sorted(e.path for e in analysis.errors if isinstance(e, CvlAssignedError)) == sorted(
        secrets
    )
    text = "\n".join(e.render() for e in analysis.errors)
    assert "192.0.2.10" not in text and "52:54:00:00:00:01" not in text


def test_cui_set_of_an_address_is_refused_and_assign_previews_it():
    runner = CliRunner()
    bad = runner.invoke(cli, ["eval", str(ACME), "--json", "--set", "d.ethernet0.ip=10.0.1.2"])
    assert bad.exit_code == 1 and bad.stdout == ""
    assert "--set d.ethernet0.ip: error: cannot set d.ethernet0.ip" in bad.stderr
    good = runner.invoke(cli, ["eval", str(ACME), "--json", "--assign", "d.ethernet0.ip=10.0.1.2"])
    assert good.exit_code == 0, good.output
    data = json.loads(good.stdout)
    assert data["components"]["d.ethernet0"]["params"]["ip"] == ["10.0.1.2"]
    assert "d.ethernet0.ip" not in data["pending"]
    check = runner.invoke(cli, ["check", str(ACME), "--assign", "d.domain=x"])
    assert check.exit_code == 1 and "assigned d.domain: error: " in check.stderr


# -- the assigned channel ----------------------------------------------------------------------


def test_assigned_values_complete_the_second_evaluation():
    """The utility's feedback loop: pending paths in, addresses assigned, dependents computed."""
    first = cvl.evaluate_file(ACME)
    wanted = [p for p in first.pending if p.rpartition(".")[2] in UTILITY_ASSIGNED_INTERFACE_PARAMS]
    assert "f.ethernet1.ip" in wanted and "d.ethernet0.mac" in wanted
    assigned = {path: f"10.0.1.{n}" for n, path in enumerate(wanted, start=2)}
    final = cvl.evaluate_file(ACME, assigned=assigned)
    assert final.pending == ()
    assert final.value("defaultroute") == (assigned["f.ethernet0.ip"],)
    services = [cvl.maps.decode(s) for s in final.value("f.services") or ()]
    assert ("ip", assigned["l.ethernet0.ip"]) in services[0]


def test_assigned_may_set_nothing_but_assigned_parameters():
    for path in ("domain", "d.domain", "d.name", "d.ethernet0.defaultroute", "vanIF"):
        error = refused(cvl.analyse_file(ACME, assigned={path: "x"}))
        assert error.path == path
        assert error.render().startswith(f"assigned {path}: error: assigned value for {path}")


def test_assigned_to_nothing_is_an_override_error():
    analysis = cvl.analyse_file(ACME, assigned={"d.ethernet7.ip": "x", "d..ip": "y"})
    assert analysis.model is None
    assert [type(e) for e in analysis.errors] == [CvlOverrideError, CvlOverrideError]
    assert analysis.errors[0].render().startswith("assigned d.ethernet7.ip: error: cannot set")


ACME_PARAMS = {
    component.child_path(name): component.kind == "interface"
    and name in UTILITY_ASSIGNED_INTERFACE_PARAMS
    for component in cvl.evaluate_file(ACME).walk()
    for name in component.declared
}
ACME_PATHS = sorted(ACME_PARAMS)


@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from(ACME_PATHS), value=st.text(max_size=20))
def test_override_and_assigned_are_exact_complements(path, value):
    """For every parameter path: exactly one of the two channels may set it."""
    assert sum(ACME_PARAMS.values()) == 4 * 4  # 4 interfaces x mac, ip, subnet, netmask
    utility_s = ACME_PARAMS[path]
    by_user = cvl.analyse_file(ACME, overrides={path: value})
    by_utility = cvl.analyse_file(ACME, assigned={path: value})
    refusals = [
        any(isinstance(e, CvlAssignedError) and e.path == path for e in a.errors)
        for a in (by_user, by_utility)
    ]
    assert refusals == [utility_s, not utility_s]


# -- the examples ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [ACME, *sorted(APPLIANCES.glob("*/*.cvl"))],
    ids=lambda p: str(Path(p).relative_to(ROOT)),
)
def test_no_example_sets_an_assigned_parameter(path):
    errors: list[CvlError] = cvl.check_file(path)
    assert not [e.render() for e in errors if isinstance(e, CvlAssignedError)]
