"""Required sensitive parameters: never in CVL files, supplied by the user agent at start."""

from __future__ import annotations

from click.testing import CliRunner

import cvl
from cui.main import cli

SOURCE = """CVL = "0.8";
Secretive extends VMAppliance {
  var "required" "sensitive" rootpw;
  var "required" domain;
  vm = "s.xml";
}
"""


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_missing_sensitive_error_says_the_agent_supplies_it(tmp_path):
    path = tmp_path / "s.cvl"
    path.write_text(SOURCE.replace('  vm = "s.xml";', '  vm = "s.xml"; domain = "x";'))
    errors = cvl.check_file(path)
    assert [(e.path, e.sensitive) for e in errors] == [("rootpw", True)]
    assert "cui agent set rootpw" in errors[0].message
    assert "never write it in a CVL file" in errors[0].message


def test_check_passes_when_only_sensitive_values_are_missing(tmp_path):
    path = tmp_path / "s.cvl"
    path.write_text(SOURCE.replace('  vm = "s.xml";', '  vm = "s.xml"; domain = "x";'))
    result = run("check", str(path))
    assert result.exit_code == 0, result.output
    assert "ok: Secretive" in result.stdout
    assert "note: rootpw is required and sensitive" in result.stderr


def test_check_still_fails_on_other_errors_and_lists_the_sensitive_one_too(tmp_path):
    path = tmp_path / "s.cvl"
    path.write_text(SOURCE)
    result = run("check", str(path))
    assert result.exit_code == 1
    assert "required parameter domain has no value" in result.stderr
    assert "required parameter rootpw has no value" in result.stderr
    assert result.stderr.strip().endswith("2 errors")
