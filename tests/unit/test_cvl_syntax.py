"""The CVL grammar and syntax tree: Appendix A, the figures' extras, positions, syntax errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvl.errors import CvlError, CvlMapError, CvlSyntaxError
from cvl.syntax import Assign, CompDecl, Import, MapLit, ObjDecl, Ref, Str, VarDecl, parse

PAPER = Path(__file__).resolve().parents[2] / "examples" / "paper"


def test_appendix_a_constructs_with_positions():
    program = parse(
        'CVL = "0.8";\n'
        'import { url => "file:x", cvl => "a.cvl", } D;\n'
        "A extends VMAppliance {\n"
        '  var "required" "sensitive" a, b;\n'
        "  Interface e1, e2;\n"
        '  a = "x\\"y", {k => {z => b}, "quoted key" => e1.ip}, e1.ip;\n'
        "}\n",
        "f.cvl",
    )
    version, imp, obj = program.stmts
    assert isinstance(version, Assign) and version.target.parts == ("CVL",)
    assert isinstance(imp, Import) and (imp.line, imp.col) == (2, 1)
    assert imp.name.text == "D" and [p.key for p in imp.spec.pairs] == ["url", "cvl"]
    assert isinstance(obj, ObjDecl) and obj.parent is not None and obj.parent.text == "VMAppliance"
    var, comp, assign = obj.body
    assert isinstance(var, VarDecl) and (var.line, var.col) == (4, 3)
    assert [a.value for a in var.attrs] == ["required", "sensitive"]
    assert [n.text for n in var.names] == ["a", "b"]
    assert isinstance(comp, CompDecl) and comp.type.text == "Interface"
    assert [(n.text, n.line, n.col) for n in comp.names] == [("e1", 5, 13), ("e2", 5, 17)]
    assert isinstance(assign, Assign) and (assign.line, assign.col) == (6, 3)
    first, second, third = assign.values
    assert first == Str(value='x"y', line=6, col=7)
    assert isinstance(second, MapLit) and second.depth == 2
    assert second.pairs[1].key == "quoted key"
    assert isinstance(third, Ref) and third.parts == ("e1", "ip") and third.col == 55


def test_objects_without_extends_comments_and_escapes():
    program = parse(
        "// line comment\n"
        "/* block\n comment */ Interface { var mac; /* inline */ }\n"
        'X extends Y { var s; s = "a\\\\b\\n\\t"; }\n'
    )
    base, derived = program.objects
    assert base.parent is None and base.name.text == "Interface"
    (_, assign) = derived.body
    assert assign.values[0].value == "a\\b\n\t"


def test_paper_files_parse():
    files = sorted(PAPER.rglob("*.cvl"))
    assert len(files) == 6
    for path in files:
        assert parse(path.read_text(), str(path)).objects


def test_prelude_is_figure_1_plus_name():
    from importlib import resources

    prelude = parse(resources.files("cvl").joinpath("prelude.cvl").read_text())
    figure1 = parse((PAPER / "Figure1.cvl").read_text())

    def without_name(program):
        shape = {}
        for obj in program.objects:
            body = []
            for stmt in obj.body:
                if isinstance(stmt, VarDecl):
                    names = tuple(n.text for n in stmt.names if n.text != "name")
                    if names:
                        body.append(("var", tuple(a.value for a in stmt.attrs), names))
                elif isinstance(stmt, CompDecl):
                    body.append(("comp", stmt.type.text, tuple(n.text for n in stmt.names)))
                else:
                    body.append(
                        (
                            "asgn",
                            stmt.target.parts,
                            tuple(v.value for v in stmt.values if isinstance(v, Str)),
                        )
                    )
            shape[obj.name.text] = (obj.parent.text if obj.parent else None, body)
        return shape

    assert without_name(prelude) == without_name(figure1)
    names = {
        o.name.text
        for o in prelude.objects
        if any(isinstance(s, VarDecl) and "name" in [n.text for n in s.names] for s in o.body)
    }
    assert names == {"Interface", "Appliance"}


@pytest.mark.parametrize(
    ("text", "line", "col", "fragment"),
    [
        ("A extends B { x = ; }", 1, 19, "expected one of '{', a name, a quoted string"),
        ('A extends B {\n  x = "a"\n', 3, 1, "unexpected end of input; expected one of ',', ';'"),
        ("A { var ; }", 1, 9, "unexpected ';'"),
        ('A { x = "abc\n }', 1, 9, "unterminated string"),
        ('A { x = "a\\q"; }', 1, 11, "unknown escape"),
        ("A { } /* never closed", 1, 7, "unterminated comment"),
        ("A { x = @; }", 1, 9, "unexpected character '@'"),
        ('import { url => "a" } ;', 1, 23, "expected a name"),
        ("A extends { }", 1, 11, "expected a name"),
        ("A { x = {a => }; }", 1, 15, "unexpected '}'"),
        ("A { x = {}; }", 1, 10, "unexpected '}'"),
        ('A { x = {a => "1",, }; }', 1, 19, "unexpected ','"),
        ('A { x = "1", ; }', 1, 14, "unexpected ';'"),
    ],
)
def test_syntax_errors_say_where_and_what_was_expected(text, line, col, fragment):
    with pytest.raises(CvlSyntaxError) as caught:
        parse(text, "bad.cvl")
    error = caught.value
    assert (error.file, error.line, error.col) == ("bad.cvl", line, col), error.render()
    assert fragment in error.message
    rendered = error.render().splitlines()
    assert rendered[0] == f"bad.cvl:{line}:{col}: error: {error.message}"
    assert rendered[2].index("^") - 4 == col - 1


def test_end_of_input_error_points_past_the_last_character():
    with pytest.raises(CvlSyntaxError) as caught:
        parse("A {")
    assert "end of input" in caught.value.message
    assert (caught.value.line, caught.value.col) == (1, 4)


def test_trailing_comma_only_before_closing_brace_of_a_map():
    parse('A { x = {a => "1", b => "2",}; }')
    with pytest.raises(CvlSyntaxError):
        parse("A { var a, ; }")


def test_map_nesting_limit_is_an_error_not_a_crash():
    def nested(depth: int) -> str:
        return "{a => " * depth + '"x"' + "}" * depth

    parse(f"A {{ x = {nested(32)}; }}")
    for depth in (33, 100_000):
        with pytest.raises(CvlMapError) as caught:
            parse(f"A {{ x = {nested(depth)}; }}")
        assert caught.value.line == 1 and caught.value.col > 0
        assert "deeper than 32" in caught.value.message


def test_long_source_lines_render():
    with pytest.raises(CvlError) as caught:
        parse("A { x = " + '"a", ' * 10_000 + "@ }")
    rendered = caught.value.render()
    assert rendered.startswith("<cvl>:1:")
    assert len(rendered.splitlines()[1]) <= 200


def test_tabs_keep_the_caret_aligned():
    with pytest.raises(CvlError) as caught:
        parse("A {\n\tx = @; }")
    _, line, caret = caught.value.render().splitlines()
    assert line == "    \tx = @; }"
    assert caret == "    \t    ^"
