"""CVL map strings: exact escaping, decoding, and the round trip (property-based)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvl.errors import CvlMapError
from cvl.maps import decode, encode, escape, unescape


def test_paper_examples():
    assert encode([("a", "b"), ("c", "d")]) == "a=b&c=d"
    assert encode([("a", encode([("b", "c d")]))]) == "a=b%3Dc%2520d"
    assert encode([("port", "389/tcp"), ("ip", "10.0.1.3")]) == "port=389%2Ftcp&ip=10%2E0%2E1%2E3"


def test_utf8_bytes_are_escaped_upper_case():
    assert escape("é") == "%C3%A9"
    assert escape("a_b-c") == "a%5Fb%2Dc"
    assert unescape("%C3%A9") == "é"


def test_empty_map_and_empty_values():
    assert encode([]) == "" and decode("") == []
    assert decode(encode([("", "")])) == [("", "")]


@pytest.mark.parametrize("bad", ["a", "a=b&c", "a=%zz", "a=%e9", "a=b c", "a=%C3"])
def test_malformed_map_strings_are_errors(bad):
    with pytest.raises(CvlMapError):
        decode(bad)


pairs = st.lists(st.tuples(st.text(), st.text()), max_size=8)


@settings(deadline=None)  # shared 2-core CI machine: no per-example deadline
@given(pairs)
def test_decode_inverts_encode(items):
    assert decode(encode(items)) == items


@settings(deadline=None)  # shared 2-core CI machine: no per-example deadline
@given(pairs)
def test_encoded_keys_and_values_use_only_alphanumerics_and_escapes(items):
    text = encode(items)
    for part in text.split("&") if text else []:
        key, value = part.split("=")
        for piece in (key, value):
            assert re.fullmatch(r"(?:[A-Za-z0-9]|%[0-9A-F]{2})*", piece)


@settings(deadline=None)  # shared 2-core CI machine: no per-example deadline
@given(st.text())
def test_escape_leaves_exactly_alphanumerics(value):
    escaped = escape(value)
    kept = re.sub(r"%[0-9A-F]{2}", "", escaped)
    assert kept == "".join(c for c in value if c.isascii() and c.isalnum())
    assert unescape(escaped) == value


@settings(deadline=None)  # shared 2-core CI machine: no per-example deadline
@given(
    st.recursive(
        st.text(max_size=5),
        lambda inner: st.lists(st.tuples(st.text(max_size=3), inner), max_size=3).map(encode),
        max_leaves=10,
    )
)
def test_nested_maps_round_trip_level_by_level(value):
    assert unescape(escape(value)) == value
