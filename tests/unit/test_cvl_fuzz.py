"""Mutated CVL never crashes: the only outcomes are a model or CVL errors with a position."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cvl
from cvl.resolver import DefaultResolver

PAPER = Path(__file__).resolve().parents[2] / "examples" / "paper"
GROUPWARE = (PAPER / "Groupware" / "Groupware.cvl").read_text()
DNS = (PAPER / "DNS" / "DNS.cvl").read_text()
TOKENS = [
    "{",
    "}",
    ";",
    ",",
    "=>",
    "=",
    '"',
    ".",
    "extends",
    "var",
    "import",
    "/*",
    "*/",
    "//",
    '"required"',
    "d",
    "domain",
    "ethernet0",
    "\\",
    "\n",
    " ",
    "Interface",
    "VMAppliance",
    "{ a => {b => ",
    "d.domain",
    "l.name",
    "DNS",
    "f",
]

mutation = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 20)),
    st.tuples(
        st.just("insert"), st.integers(0, 10_000), st.sampled_from(TOKENS) | st.text(max_size=3)
    ),
    st.tuples(
        st.just("replace"), st.integers(0, 10_000), st.sampled_from(TOKENS) | st.characters()
    ),
)


def mutate(text: str, ops) -> str:
    for op, where, arg in ops:
        where = where % (len(text) + 1)
        if op == "delete":
            text = text[:where] + text[where + arg :]
        elif op == "insert":
            text = text[:where] + arg + text[where:]
        else:
            text = text[:where] + arg + text[where + 1 :]
    return text


def outcome(text: str, base_dir: Path) -> None:
    analysis = cvl.analyse_text(text, "mutant.cvl", resolver=DefaultResolver(), base_dir=base_dir)
    if analysis.model is not None:
        analysis.model.to_json()
        assert not analysis.errors
        return
    assert analysis.errors
    for error in analysis.errors:
        assert isinstance(error, cvl.CvlError)
        assert error.line >= 1 and error.col >= 1, error.render()
        assert error.render().splitlines()[0].count(":") >= 3


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_groupware_gives_model_or_positioned_errors(ops):
    outcome(mutate(GROUPWARE, ops), PAPER / "Groupware")


@settings(max_examples=200, deadline=None)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_dns_gives_model_or_positioned_errors(ops):
    outcome(mutate(DNS, ops), PAPER / "DNS")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_model_or_positioned_errors(text):
    outcome(text, PAPER)
