"""Required sensitive parameters: never in CVL files, supplied by the user agent at start."""

from __future__ import annotations

import json

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# -- sensitive is contagious -------------------------------------------------------------------

CONTAGION = """CVL = "0.8";
Box extends VMAppliance { var login, copy, plain; vm = "b.vmx"; }
Root extends VANAppliance {
  var "sensitive" pw;
  var creds, again, plain, route;
  Box b;
  creds = { user => "admin", pass => pw };
  again = { outer => creds }, "x";
  b.login = again;
  b.copy = b.login;
  plain = { user => "admin" };
  b.plain = plain;
  route = { gw => b.ethernet0.ip, pw => pw };
  vanIF = "b.ethernet0";
}
"""
SECRET = "Hunter2Secret"


def contagion(tmp_path, **kwargs) -> cvl.Model:
    path = tmp_path / "c.cvl"
    path.write_text(CONTAGION)
    return cvl.evaluate_file(path, overrides={"pw": SECRET}, **kwargs)


def test_values_computed_from_a_sensitive_one_are_sensitive_per_path(tmp_path):
    model = contagion(tmp_path)
    derived = ["b.copy", "b.login", "creds", "pw", "route", "again"]
    assert model.sensitive_paths() == tuple(sorted(derived))
    assert model.root.sensitive_params == ("pw", "creds", "again", "route")
    assert model.component("b").sensitive_params == ("login", "copy")
    assert not model.is_sensitive("plain") and not model.is_sensitive("b.plain")
    # the declaration still says which one the user supplies; derived ones are not declared
    assert [n for n, d in model.root.declared.items() if d.sensitive] == ["pw"]
    # a pending value is flagged before it has a value
    assert "route" in model.pending and model.is_sensitive("route")


def test_to_json_masks_every_sensitive_value_and_reveal_is_explicit(tmp_path):
    model = contagion(tmp_path)
    data = model.to_json()
    assert SECRET not in json.dumps(data)
    assert data["sensitive"] == list(model.sensitive_paths())
    root = data["components"][""]
    assert root["params"]["creds"] == ["******"] and root["params"]["pw"] == ["******"]
    assert root["params"]["plain"] == ["user=admin"]  # not derived: in clear
    assert data["components"]["b"]["sensitive"] == ["login", "copy"]
    shown = model.to_json(reveal=True)
    assert shown["components"][""]["params"]["creds"] == [f"user=admin&pass={SECRET}"]
    assert SECRET in shown["components"]["b"]["params"]["copy"][0]
    # with the addresses assigned, the once-pending value is there, and still masked
    final = contagion(tmp_path, assigned={"b.ethernet0.ip": "10.0.0.2"})
    assert final.to_json()["components"][""]["params"]["route"] == ["******"]
    assert SECRET not in json.dumps(final.to_json())


def test_an_override_replaces_the_value_and_with_it_the_taint(tmp_path):
    path = tmp_path / "c.cvl"
    path.write_text(CONTAGION)
    model = cvl.evaluate_file(path, overrides={"pw": SECRET, "creds": "user=guest"})
    assert model.sensitive_paths() == ("pw", "route")  # creds and what derives from it: clear
    assert model.value("again") == ("outer=user%3Dguest", "x")


def test_cui_eval_never_prints_a_derived_value(tmp_path):
    path = tmp_path / "c.cvl"
    path.write_text(CONTAGION)
    sets = ["--set", f"pw={SECRET}", "--assign", "b.ethernet0.ip=10.0.0.2"]
    table = run("eval", str(path), *sets)
    as_json = run("eval", str(path), "--json", *sets)
    for result in (table, as_json):
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output
    assert "sensitive (derived)" in table.stdout and "user=admin" in table.stdout
    assert json.loads(as_json.stdout)["components"]["b"]["params"]["copy"] == ["******"]


def test_an_error_about_a_sensitive_value_names_the_path_only(tmp_path):
    path = tmp_path / "c.cvl"
    path.write_text(CONTAGION.replace('vanIF = "b.ethernet0";', "vanIF = pw;"))
    errors = cvl.check_file(path, overrides={"pw": SECRET})
    text = "\n".join(e.render() for e in errors)
    assert "vanIF is a sensitive value, which is not an interface of Root" in text
    assert SECRET not in text
    result = run("check", str(path), "--set", f"pw={SECRET}")
    assert result.exit_code == 1 and SECRET not in result.output
    plain = run("check", str(path), "--set", "pw=notsecretatall")  # the test can fail
    assert plain.exit_code == 1 and "notsecretatall" not in plain.output


def test_a_malformed_set_never_echoes_its_value(tmp_path):
    path = tmp_path / "c.cvl"
    path.write_text(CONTAGION)
    result = run("eval", str(path), "--set", f"={SECRET}")
    assert result.exit_code != 0 and SECRET not in result.output
    assert "--set with an empty PATH: expected PATH=VALUE" in result.output


# -- property: every value derived from a sensitive root is flagged and never shown ------------

# The secret starts with "ZQ": hex escapes (%XX, 0-9A-F), literals and keys (lower case) and the
# names in the source can never spell it, so finding it anywhere means the secret itself leaked.
secrets_ = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=4, max_size=10).map(
    lambda tail: "ZQ" + tail
)
literals = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ./=&%", max_size=8)
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=5)


@st.composite
def chains(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[bool], str | None]:
    """Parameters p0..pn, each at the root or in component b, assigned from earlier ones, `pw`,
    literals, the pending `b.ethernet0.ip` and (nested) maps of those; their expected taint; and
    what `vanIF` refers to (None: a valid interface, else a parameter: an error about a value)."""
    count = draw(st.integers(1, 8))
    paths = [draw(st.sampled_from(["", "b."])) + f"p{i}" for i in range(count)]
    tainted: list[bool] = []
    sources: list[str] = []

    def item(depth: int, index: int) -> tuple[str, bool]:
        kind = draw(st.sampled_from(["lit", "pw", "ref", "pending", "map"][: 5 if depth else 4]))
        if kind == "lit":
            return json.dumps(draw(literals)), False
        if kind == "pw":
            return "pw", True
        if kind == "pending":
            return "b.ethernet0.ip", False
        if kind == "ref":
            if index == 0:
                return "pw", True
            j = draw(st.integers(0, index - 1))
            return paths[j], tainted[j]
        pairs = [(draw(keys), item(depth - 1, index)) for _ in range(draw(st.integers(1, 3)))]
        text = "{ " + ", ".join(f"{k} => {v}" for k, (v, _) in pairs) + " }"
        return text, any(t for _, (_, t) in pairs)

    for index in range(count):
        items = [item(2, index) for _ in range(draw(st.integers(1, 3)))]
        sources.append(", ".join(text for text, _ in items))
        tainted.append(any(t for _, t in items))
    van_if = draw(st.one_of(st.none(), st.sampled_from([*paths, "pw"])))
    return list(zip(paths, sources, strict=True)), tainted, van_if


def chain_source(assigns: list[tuple[str, str]], van_if: str | None) -> str:
    root = [p for p, _ in assigns if "." not in p]
    boxed = [p.partition(".")[2] for p, _ in assigns if "." in p]
    lines = ['CVL = "0.8";', "Box extends VMAppliance {"]
    lines += [f"  var {', '.join(boxed)};"] if boxed else []
    lines += ['  vm = "b.vmx";', "}", "Root extends VANAppliance {", '  var "sensitive" pw;']
    lines += [f"  var {', '.join(root)};"] if root else []
    lines += ["  Box b;"] + [f"  {path} = {source};" for path, source in assigns]
    lines += [f"  vanIF = {van_if or chr(34) + 'b.ethernet0' + chr(34)};", "}"]
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=chains(), secret=secrets_, assign=st.booleans())
def test_every_derived_value_is_flagged_and_never_shown(chain, secret, assign):
    assigns, tainted, van_if = chain
    text = chain_source(assigns, van_if)
    assigned = {"b.ethernet0.ip": "10.0.0.2"} if assign else None
    analysis = cvl.analyse_text(
        text, "p.cvl", overrides={"pw": secret}, base_dir="/nonexistent", assigned=assigned
    )
    rendered = "\n".join(e.render() for e in analysis.errors)
    assert secret not in rendered and secret not in text
    if analysis.model is None:
        assert van_if is not None, rendered  # the only error this generator can make
        return
    model = analysis.model
    expected = {path for (path, _), t in zip(assigns, tainted, strict=True) if t} | {"pw"}
    if van_if in expected:  # vanIF is derived too (here: pending, so not yet an error)
        expected.add("vanIF")
    assert set(model.sensitive_paths()) == expected
    assert secret not in json.dumps(model.to_json())
    revealed = json.dumps(model.to_json(reveal=True))
    for path in expected:  # every flagged value that has one does carry the secret
        values = model.value(path)
        assert values is None or any(secret in v for v in values), (path, values)
    assert secret in revealed
