"""Semantics of CVL evaluation: inheritance, components, references, maps, pending, errors."""

from __future__ import annotations

import pytest

import cvl
from cvl.errors import (
    CvlAssignmentError,
    CvlCycleError,
    CvlDeclarationError,
    CvlError,
    CvlMissingError,
    CvlOverrideError,
    CvlVersionError,
)


class DictResolver:
    """Serves CVL text from memory: {url: {cvl: text}}; version "unversioned" unless pinned."""

    def __init__(self, files: dict[str, dict[str, str]]) -> None:
        self.files = files
        self.calls: list[tuple[str, str, str | None]] = []

    def fetch(self, url: str, cvl_name: str, version: str | None, base_dir: str | None):
        self.calls.append((url, cvl_name, version))
        try:
            return self.files[url][cvl_name], version or "7"
        except KeyError:
            raise cvl.CvlError(f"no {cvl_name} at {url}") from None


def ev(text: str, overrides=None, resolver=None) -> cvl.Model:
    return cvl.evaluate_text(
        text,
        "t.cvl",
        resolver=resolver or DictResolver({}),
        overrides=overrides,
        base_dir="/nonexistent",
    )


def errors(text: str, overrides=None, resolver=None) -> list[CvlError]:
    analysis = cvl.analyse_text(
        text,
        "t.cvl",
        resolver=resolver or DictResolver({}),
        overrides=overrides,
        base_dir="/nonexistent",
    )
    assert analysis.model is None or not analysis.errors
    return analysis.errors


def one_error(text: str, cls: type[CvlError], **kw) -> CvlError:
    found = errors(text, **kw)
    assert len(found) == 1, [e.render() for e in found]
    assert isinstance(found[0], cls), found[0].render()
    return found[0]


VM = 'VM1 extends VMAppliance { vm = "a.vmx"; }\n'


# -- inheritance and assignment order ---------------------------------------------------------


def test_child_assignment_overrides_parent_and_parent_runs_first():
    model = ev(
        'Base extends VMAppliance { var a, b; vm = "base.vmx"; a = "parent"; b = a; }\n'
        'Child extends Base { a = "child"; }\n'
    )
    root = model.root
    assert root.kind == "vm"
    assert root.param("vm") == ("base.vmx",)
    assert root.param("a") == ("child",)
    # b = a is written in the parent but resolved against a's *final* value
    assert root.param("b") == ("child",)


def test_container_overrides_component_type_and_user_overrides_container():
    model = ev(
        'D extends VMAppliance { var port; vm = "d.vmx"; port = "53"; }\n'
        'V extends VANAppliance { D d; d.port = "5353"; vanIF = "d.ethernet0"; }\n'
        'U extends V { d.port = "99"; }\n'
    )
    assert model.value("d.port") == ("99",)
    assert model.appliance == "U"


def test_references_resolve_against_final_values_across_components():
    # Groupware's d.domain = domain; the user (a subclass) sets domain afterwards.
    model = ev(
        'D extends VMAppliance { var "required" domain; vm = "d.vmx"; }\n'
        'G extends VANAppliance { var "required" domain; D d; d.domain = domain;'
        ' vanIF = "d.ethernet0"; }\n'
        'Acme extends G { domain = "acme.org"; }\n'
    )
    assert model.value("d.domain") == ("acme.org",)


def test_values_are_lists_and_rhs_items_concatenate():
    model = ev('A extends VMAppliance { var x, y; vm = "a"; y = "1", "2"; x = "0", y, "3"; }')
    assert model.root.param("x") == ("0", "1", "2", "3")


def test_reference_to_unset_optional_parameter_adds_nothing():
    model = ev('A extends VMAppliance { var x, y, z; vm = "a"; x = y; z = {k => y, j => "v"}; }')
    assert model.root.param("x") is None
    assert model.root.param("z") == ("j=v",)


def test_map_pair_with_several_values_repeats_its_key():
    model = ev('A extends VMAppliance { var x, y; vm = "a"; y = "1", "2"; x = {k => y}; }')
    assert model.root.param("x") == ("k=1&k=2",)


def test_nested_map_is_encoded_then_escaped():
    model = ev('A extends VMAppliance { var x; vm = "a"; x = {a => {b => "c d"}}; }')
    assert model.root.param("x") == ("a=b%3Dc%2520d",)
    assert cvl.maps.decode(model.root.param("x")[0]) == [("a", "b=c%20d")]


# -- names, pending, overrides ----------------------------------------------------------------


def test_name_defaults_to_component_name_and_root_object_name():
    model = ev(VM + 'V extends VANAppliance { VM1 web; vanIF = "web.ethernet0"; }')
    assert model.value("name") == ("V",)
    assert model.value("web.name") == ("web",)
    assert model.value("web.ethernet0.name") == ("ethernet0",)


def test_name_can_be_assigned():
    model = ev(
        VM + 'V extends VANAppliance { VM1 web; web.name = "www"; vanIF = "web.ethernet0"; }'
    )
    assert model.value("web.name") == ("www",)


def test_interface_params_are_pending_and_dependents_too():
    model = ev(
        VM + "V extends VANAppliance { var route, plain; VM1 a; route = a.ethernet0.ip;"
        ' plain = "x"; defaultroute = {gw => a.ethernet0.ip}; vanIF = "a.ethernet0"; }'
    )
    assert "a.ethernet0.ip" in model.pending
    assert "route" in model.pending and "defaultroute" in model.pending
    assert "plain" not in model.pending
    assert model.root.param("route") is None
    assert list(model.pending) == sorted(model.pending)
    assert model.component("a.ethernet0").pending == ("mac", "ip", "subnet", "netmask")


def test_assigned_values_fill_pending_ones_and_overrides_override_cvl():
    model = cvl.evaluate_text(
        VM + "V extends VANAppliance { var route, tag; VM1 a; route = a.ethernet0.ip;"
        ' tag = "cvl"; vanIF = "a.ethernet0"; }',
        "t.cvl",
        resolver=DictResolver({}),
        overrides={"tag": ["x", "y"]},
        assigned={"a.ethernet0.ip": "10.0.0.5"},
    )
    assert model.value("route") == ("10.0.0.5",)
    assert model.value("tag") == ("x", "y")
    assert "a.ethernet0.ip" not in model.pending and "route" not in model.pending


def test_override_of_unknown_parameter_is_an_error():
    error = one_error(VM, CvlOverrideError, overrides={"ethernet0.nope": "1"})
    assert "nope" in error.message and "ethernet0" in error.message
    assert error.render().startswith("--set ethernet0.nope: error: ")


# -- required and sensitive -------------------------------------------------------------------


def test_missing_required_names_path_declaration_and_what_to_do():
    text = (
        'D extends VMAppliance { var "required" domain; vm = "d.vmx"; }\n'
        'G extends VANAppliance { D d; vanIF = "d.ethernet0"; }\n'
    )
    error = one_error(text, CvlMissingError)
    assert (error.file, error.line, error.col) == ("t.cvl", 2, 1)
    assert "d.domain" in error.message and error.path == "d.domain"
    assert "t.cvl:1:40" in error.message  # where it was declared
    assert "must set it" in error.message and 'd.domain = "...";' in error.message
    assert error.source_line == text.splitlines()[1]


def test_missing_required_does_not_cascade_to_assignments_from_it():
    text = (
        'D extends VMAppliance { var "required" domain; vm = "d.vmx"; }\n'
        'G extends VANAppliance { var "required" domain; D d; d.domain = domain;'
        ' vanIF = "d.ethernet0"; }\n'
    )
    error = one_error(text, CvlMissingError)
    assert "parameter domain " in error.message


def test_required_and_sensitive_flags_in_model_and_json():
    model = ev(
        'A extends VMAppliance { var "required" "sensitive" pw; var "sensitive" k; '
        'vm = "a"; pw = "s3cret"; }'
    )
    root = model.root
    assert root.declared["pw"].required and root.declared["pw"].sensitive
    assert root.declared["k"].sensitive and not root.declared["k"].required
    assert root.sensitive == ("pw", "k")
    assert "pw" in root.required and "vm" in root.required and "vanIF" in root.required
    assert model.to_json()["components"][""]["sensitive"] == ["pw", "k"]


# -- declaration errors -----------------------------------------------------------------------


def test_assigning_undeclared_parameter_is_an_error_with_position():
    error = one_error('A extends VMAppliance { vm = "a";\n  colour = "red"; }', CvlAssignmentError)
    assert (error.line, error.col) == (2, 3)
    assert "colour" in error.message and "not declared on A" in error.message


def test_assigning_undeclared_parameter_of_component():
    error = one_error(
        VM + 'V extends VANAppliance { VM1 a; a.nope = "1"; vanIF = "a.ethernet0"; }',
        CvlAssignmentError,
    )
    assert (error.line, error.col) == (2, 33)
    assert "nope" in error.message and "component a" in error.message


def test_assigning_a_component_is_an_error():
    error = one_error(
        VM + 'V extends VANAppliance { VM1 a; a = "1"; vanIF = "a.ethernet0"; }', CvlAssignmentError
    )
    assert "is a component" in error.message


def test_unknown_reference_is_an_error():
    error = one_error(
        'A extends VMAppliance { var x; vm = "a"; x = ethernet0.nope; }', CvlAssignmentError
    )
    assert (error.line, error.col) == (1, 46)
    assert "ethernet0.nope" in error.message


def test_duplicate_declaration_is_an_error():
    error = one_error('A extends VMAppliance { var x; vm = "a";\n var x; }', CvlDeclarationError)
    assert (error.line, error.col) == (2, 6)
    assert "declared twice" in error.message


def test_redeclaring_an_inherited_parameter_is_an_error():
    error = one_error('A extends VMAppliance { var vm; vm = "a"; }', CvlDeclarationError)
    assert "already declared by VMAppliance" in error.message


def test_component_with_same_name_as_parameter_is_an_error():
    error = one_error(
        'A extends VMAppliance { var e; Interface e; vm = "a"; }', CvlDeclarationError
    )
    assert (error.line, error.col) == (1, 42)


def test_unknown_component_type_is_an_error():
    error = one_error('V extends VANAppliance { Nope n; vanIF = "x"; }', CvlDeclarationError)
    assert (error.line, error.col) == (1, 26)
    assert "unknown component type Nope" in error.message


def test_unknown_parent_is_an_error():
    error = one_error("A extends Nope { }", CvlDeclarationError)
    assert (error.line, error.col) == (1, 11)


def test_inheritance_cycle_is_an_error():
    found = errors("A extends B { }\nB extends A { }")
    assert any(isinstance(e, CvlCycleError) and "inheritance cycle" in e.message for e in found)


def test_only_vans_have_appliance_components():
    error = one_error(VM + 'A extends VMAppliance { VM1 inner; vm = "a"; }', CvlDeclarationError)
    assert "only VANAppliances may have" in error.message
    assert (error.line, error.col) == (2, 25)


def test_only_vms_have_interfaces():
    error = one_error('V extends VANAppliance { Interface e; vanIF = "x"; }', CvlDeclarationError)
    assert "only VMAppliances may have Interface components" in error.message


def test_root_must_be_an_appliance():
    error = one_error("X extends Appliance { }", CvlDeclarationError)
    assert "not an appliance" in error.message


def test_a_van_cannot_contain_itself():
    found = errors(
        'V extends VANAppliance { W w; vanIF = "x"; }\n'
        'W extends VANAppliance { V v; vanIF = "x"; }\n'
        'R extends VANAppliance { V v; vanIF = "x"; }'
    )
    assert any(isinstance(e, CvlCycleError) and "contains itself" in e.message for e in found)


@pytest.mark.parametrize(
    ("van_if", "fragment"),
    [
        ('"nope"', "'nope', which is not an interface"),
        ('"a"', "'a', which is not an interface"),
        ('"a.ethernet0", "a.ethernet0"', "has 2 values"),
    ],
)
def test_van_interface_must_name_one_interface(van_if, fragment):
    error = one_error(
        VM + f"V extends VANAppliance {{ VM1 a;\n vanIF = {van_if}; }}", CvlAssignmentError
    )
    assert fragment in error.message and error.message.startswith("vanIF ")
    assert (error.line, error.col) == (3, 2)


def test_van_interface_may_be_nested_and_checked_in_overrides():
    model = ev(
        VM + 'W extends VANAppliance { VM1 a; vanIF = "a.ethernet0"; }\n'
        'V extends VANAppliance { W g; vanIF = "g.a.ethernet0"; }'
    )
    assert model.value("vanIF") == ("g.a.ethernet0",)
    error = one_error(VM, CvlOverrideError, overrides={"vanIF": "ethernet9"})
    assert error.render().startswith("--set vanIF: error: vanIF is 'ethernet9'")


def test_reference_cycle_is_an_error_naming_the_cycle():
    error = one_error(
        'A extends VMAppliance { var x, y, z; vm = "v";\n x = y; y = z; z = x; }', CvlCycleError
    )
    assert "reference cycle" in error.message
    for name in ("x", "y", "z"):
        assert f"{name} ->" in error.message or error.message.endswith(name)
    assert error.line == 2


def test_self_reference_is_a_cycle():
    error = one_error('A extends VMAppliance { var x; vm = "v"; x = x; }', CvlCycleError)
    assert "x -> x" in error.message


def test_long_reference_chain_does_not_hit_recursion_limit():
    names = [f"p{i}" for i in range(5000)]
    body = "".join(f"{a} = {b};" for a, b in zip(names, names[1:], strict=False))
    model = ev(
        f'A extends VMAppliance {{ var {", ".join(names)}; vm = "v"; {body} {names[-1]} = "end"; }}'
    )
    assert model.root.param("p0") == ("end",)


# -- top level --------------------------------------------------------------------------------


def test_version_statement_must_be_0_8():
    assert ev('CVL = "0.8";\n' + VM).appliance == "VM1"
    error = one_error('CVL = "0.9";\n' + VM, CvlVersionError)
    assert (error.line, error.col) == (1, 7)
    assert "0.9" in error.message


def test_other_top_level_assignments_are_errors():
    error = one_error('x = "1";\n' + VM, CvlDeclarationError)
    assert (error.line, error.col) == (1, 1)


def test_file_without_objects_is_an_error():
    error = one_error('CVL = "0.8";', CvlDeclarationError)
    assert "declares no appliance" in error.message


def test_the_root_is_the_last_object_declared():
    model = ev(VM + "VM2 extends VM1 { }")
    assert model.appliance == "VM2"


def test_check_reports_every_error_not_just_the_first():
    found = errors(
        "A extends VMAppliance {\n"
        "  var x;\n"
        "  var x;\n"
        '  nope = "1";\n'
        "  Whatever w;\n"
        "  x = missing;\n"
        "}\n"
    )
    lines = sorted(e.line for e in found)
    assert lines == [1, 3, 4, 5, 6], [e.render() for e in found]


def test_evaluate_raises_cvlerrors_with_all_errors():
    with pytest.raises(cvl.CvlErrors) as caught:
        ev('A extends VMAppliance {\n var x;\n var x;\n nope = "1"; }')
    assert len(caught.value.errors) == 3
    rendered = caught.value.render()
    assert "t.cvl:3:6: error:" in rendered and "t.cvl:4:2: error:" in rendered


# -- model API --------------------------------------------------------------------------------


def test_model_accessors_and_json_shape():
    model = ev(
        VM + 'W extends VANAppliance { VM1 a; vanIF = "a.ethernet0"; }\n'
        'V extends VANAppliance { W g; VM1 b; vanIF = "b.ethernet0"; }'
    )
    assert [c.path for c in model.vms()] == ["g.a", "b"]
    assert [c.path for c in model.vans()] == ["", "g"]
    assert [c.path for c in model.interfaces("g.a")] == ["g.a.ethernet0"]
    assert model.component("g.a").interfaces == ("g.a.ethernet0",)
    assert model.component("g").interfaces == ()
    assert list(model.components) == ["", "g", "g.a", "g.a.ethernet0", "b", "b.ethernet0"]
    assert model.component("g.a").first("vm") == "a.vmx"
    data = model.to_json()
    assert set(data) == {"appliance", "components", "pending", "sensitive", "imports"}
    entry = data["components"]["g.a.ethernet0"]
    assert set(entry) == {"type", "kind", "params", "sensitive", "required", "origin"}
    assert entry["kind"] == "interface" and entry["origin"] is None
    assert entry["params"] == {"name": ["ethernet0"]}


def test_origin_is_the_import_that_defined_the_type_or_an_ancestor():
    resolver = DictResolver(
        {
            "http://repo.example/DNS": {"DNS.cvl": 'DNS extends VMAppliance { vm = "dns.vmx"; }'},
        }
    )
    model = ev(
        'import { url => "http://repo.example/DNS/", cvl => "DNS.cvl", version => "3" } DNS;\n'
        "MyDNS extends DNS { }\n"
        'V extends VANAppliance { DNS d; MyDNS m; vanIF = "d.ethernet0"; }',
        resolver=resolver,
    )
    origin = model.component("d").origin
    assert origin is not None
    assert (origin.name, origin.url, origin.cvl, origin.version) == (
        "DNS",
        "http://repo.example/DNS",
        "DNS.cvl",
        "3",
    )
    assert model.component("m").origin == origin  # walking up extends
    assert model.root.origin is None
    assert model.to_json()["imports"] == [
        {
            "name": "DNS",
            "url": "http://repo.example/DNS",
            "cvl": "DNS.cvl",
            "version": "3",
            "pinned": True,
            "requested": "3",
        }
    ]


def test_ten_thousand_components_evaluate():
    comps = "".join(f"VM1 c{i};" for i in range(10_000))
    model = ev(VM + f'V extends VANAppliance {{ {comps} vanIF = "c0.ethernet0"; c9999.vm = "z"; }}')
    assert len(model.vms()) == 10_000
    assert model.value("c9999.vm") == ("z",)
    assert len(model.pending) == 40_000
