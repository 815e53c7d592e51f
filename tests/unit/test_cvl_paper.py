"""The paper's Groupware example end to end, through `cui check` / `cui eval` (Must show)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cvl
from cui.main import cli

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "examples" / "paper"
ACME = PAPER / "AcmeGroupware.cvl"
IPS = {"d.ethernet0.ip": "10.0.1.2", "l.ethernet0.ip": "10.0.1.3", "f.ethernet0.ip": "10.0.1.4"}
SETS = [arg for path, ip in IPS.items() for arg in ("--assign", f"{path}={ip}")]


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_eval_json_with_addresses_gives_domains_and_escaped_services():
    result = run("eval", str(ACME), "--json", *SETS)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    params = {path: c["params"] for path, c in data["components"].items()}
    assert data["appliance"] == "AcmeGroupware"
    assert params["d"]["domain"] == ["acme.org"]
    assert params["l"]["domain"] == ["acme.org"]
    assert params["f"]["services"] == [
        "port=389%2Ftcp&ip=10%2E0%2E1%2E3",
        "port=636%2Ftcp&ip=10%2E0%2E1%2E3",
        "port=53%2Fudp&ip=10%2E0%2E1%2E2",
    ]
    assert params["d"]["dnshosts"] == [
        "name=l&ip=10%2E0%2E1%2E3",
        "name=d&ip=10%2E0%2E1%2E2",
        "name=f&ip=10%2E0%2E1%2E4",
    ]
    assert params[""]["defaultroute"] == ["10.0.1.4"]
    assert params[""]["vanIF"] == ["f.ethernet1"]
    assert params["d"]["datadisks"] == ["device=ide0%3A1&size=100mb"]
    assert cvl.maps.decode(params["f"]["services"][0]) == [("port", "389/tcp"), ("ip", "10.0.1.3")]
    kinds = {path: c["kind"] for path, c in data["components"].items()}
    assert kinds == {
        "": "van",
        "d": "vm",
        "d.ethernet0": "interface",
        "l": "vm",
        "l.ethernet0": "interface",
        "f": "vm",
        "f.ethernet0": "interface",
        "f.ethernet1": "interface",
    }
    assert "f.services" not in data["pending"] and "f.ethernet1.ip" in data["pending"]
    assert data["components"]["d"]["origin"]["url"] == f"file://{PAPER}/DNS"
    assert [(i["name"], i["pinned"]) for i in data["imports"]] == [
        ("Groupware", False),
        ("DNS", True),
        ("Firewall", True),
        ("OpenLDAP", False),
    ]


def test_eval_without_addresses_leaves_services_pending_and_succeeds():
    result = run("eval", str(ACME), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert "services" not in data["components"]["f"]["params"]
    for path in ("f.services", "d.dnshosts", "defaultroute", "d.ethernet0.ip"):
        assert path in data["pending"]
    assert data["pending"] == sorted(data["pending"])
    assert "pins version 3" in result.stderr  # the plain-directory note


def test_check_ok_prints_a_one_line_summary():
    result = run("check", str(ACME))
    assert result.exit_code == 0
    assert result.stdout.strip().splitlines() == [
        f"{ACME}: ok: AcmeGroupware (van), 3 VMs, 1 VAN, 4 imports, 19 pending parameters"
    ]


def test_every_paper_file_checks(tmp_path):
    for name in ("DNS/DNS.cvl", "OpenLDAP/OpenLDAP.cvl", "Firewall/Firewall.cvl"):
        # the VM appliances' own required parameters (domain, dnshosts) are for users to set
        errors = cvl.check_file(PAPER / name)
        assert all(isinstance(e, cvl.CvlError) and e.line > 0 for e in errors)
        assert all("required parameter" in e.message for e in errors)
    assert [e.message.split(" has")[0] for e in cvl.check_file(PAPER / "DNS/DNS.cvl")] == [
        "required parameter domain",
        "required parameter dnshosts",
    ]
    assert [
        e.message.split(" has")[0] for e in cvl.check_file(PAPER / "Groupware/Groupware.cvl")
    ] == ["required parameter domain"]
    assert cvl.check_file(ACME) == []


def test_user_file_omitting_domain_fails_check_with_position_and_path(tmp_path):
    shutil.copytree(PAPER, tmp_path / "paper")
    user = tmp_path / "paper" / "Forgetful.cvl"
    user.write_text(
        'import {\n    url => "file:Groupware",\n    cvl => "Groupware.cvl",\n'
        "} Groupware;\n\nForgetful extends Groupware {\n}\n"
    )
    result = run("check", str(user))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert errors == [
        f"{user}:6:1: error: required parameter domain has no value: Groupware declares it "
        f'"required" at {tmp_path}/paper/Groupware/Groupware.cvl:22:20; your CVL must set it, '
        'e.g. in Forgetful: domain = "...";'
    ]
    assert "    Forgetful extends Groupware {" in lines
    assert lines[-1] == f"{user}: 1 error"


def test_check_prints_every_error_and_eval_renders_them(tmp_path):
    bad = tmp_path / "bad.cvl"
    bad.write_text('A extends VMAppliance {\n  var x;\n  var x;\n  nope = "1"; vm = "v";\n}\n')
    result = run("check", str(bad))
    assert result.exit_code == 1
    assert f"{bad}:3:7: error: x is declared twice" in result.stderr
    assert f"{bad}:4:3: error: cannot assign nope" in result.stderr
    assert result.stderr.strip().endswith("2 errors")
    result = run("eval", str(bad))
    assert result.exit_code == 1
    assert f"{bad}:3:7: error:" in result.stderr and f"{bad}:4:3: error:" in result.stderr


def test_syntax_error_and_bad_set_and_missing_file(tmp_path):
    bad = tmp_path / "bad.cvl"
    bad.write_text("A extends VMAppliance {\n  vm = ;\n}\n")
    result = run("check", str(bad))
    assert result.exit_code == 1
    assert f"{bad}:2:8: error: unexpected ';'; expected one of" in result.stderr
    result = run("eval", str(ACME), "--set", "d.nope=1")
    assert result.exit_code == 1 and "cannot set d.nope" in result.stderr
    result = run("eval", str(ACME), "--set", "novalue")
    assert result.exit_code == 1 and "expected PATH=VALUE" in result.stderr
    result = run("check", str(tmp_path / "missing.cvl"))
    assert result.exit_code == 1 and "cannot read CVL file" in result.stderr
    latin = tmp_path / "latin.cvl"
    latin.write_bytes(b'A extends VMAppliance { vm = "caf\xe9"; }')
    result = run("check", str(latin))
    assert result.exit_code == 1 and f"{latin}: error: cannot read CVL file" in result.stderr
    crlf = tmp_path / "crlf.cvl"
    crlf.write_bytes(b"\xef\xbb\xbfA extends VMAppliance {\r\n  vm = @;\r\n}\r\n")
    result = run("check", str(crlf))
    assert f"{crlf}:2:8: error: unexpected character '@'" in result.stderr
    assert "\n      vm = @;\n           ^\n" in result.stderr


def test_eval_table_masks_sensitive_values(tmp_path):
    user = tmp_path / "s.cvl"
    user.write_text('S extends VMAppliance { var "sensitive" pw; vm = "s.vmx"; pw = "hunter2"; }')
    result = run("eval", str(user))
    assert result.exit_code == 0
    assert "hunter2" not in result.stdout and "******" in result.stdout
    assert "s.vmx" in result.stdout and "(pending)" in result.stdout


def test_repeated_set_gives_a_list_value():
    result = run("eval", str(ACME), "--json", "--set", "d.dnshosts=a", "--set", "d.dnshosts=b")
    assert json.loads(result.stdout)["components"]["d"]["params"]["dnshosts"] == ["a", "b"]


def test_real_console_script():
    cui = Path(sys.executable).parent / "cui"
    if not cui.exists():
        pytest.skip("console script not installed in this environment")
    done = subprocess.run(
        [str(cui), "eval", str(ACME), "--json", *SETS],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["components"]["l"]["params"]["domain"] == ["acme.org"]
    done = subprocess.run(
        [str(cui), "check", str(PAPER / "DNS" / "DNS.cvl")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"{PAPER}/DNS/DNS.cvl:3:1: error: required parameter domain" in done.stderr


def test_missing_placeholders_fill_only_unset_required_parameters(tmp_path):
    analysis = cvl.analyse_file(PAPER / "DNS/DNS.cvl")
    assert analysis.model is None
    assert analysis.missing_placeholders("X") == {"domain": "X", "dnshosts": "X"}
    again = cvl.analyse_file(PAPER / "DNS/DNS.cvl", overrides={"domain": "X", "dnshosts": "X"})
    assert again.errors == [] and again.model is not None
    bad = tmp_path / "bad.cvl"
    bad.write_text('A extends VMAppliance {\n  var "required" x;\n  nope = "1";\n}\n')
    # another kind of error is never papered over with placeholders
    assert cvl.analyse_file(bad).missing_placeholders("X") is None


def test_check_json_reports_ok_and_the_summary():
    result = run("check", "--json", str(ACME))
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["appliance"] == "AcmeGroupware"
    assert data["summary"] == {"vms": 3, "vans": 1, "imports": 4, "pending": 19}
    assert data["errors"] == [] and len(data["warnings"]) == 2


def test_check_json_reports_every_error_with_its_position_and_exits_1(tmp_path):
    shutil.copytree(PAPER, tmp_path / "paper")
    user = tmp_path / "paper" / "Forgetful.cvl"
    user.write_text(
        'import {\n    url => "file:Groupware",\n    cvl => "Groupware.cvl",\n'
        "} Groupware;\n\nForgetful extends Groupware {\n  nope = x;\n}\n"
    )
    result = run("check", "--json", str(user))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["summary"] is None
    where = {(e["line"], e["column"], e["kind"]) for e in data["errors"]}
    assert (6, 1, "CvlMissingError") in where
    assert any(e["line"] == 7 for e in data["errors"])
    missing = next(e for e in data["errors"] if e["kind"] == "CvlMissingError")
    assert missing["path"] == "domain" and missing["file"] == str(user)
