"""The API's field readers: exactly one shape accepted, everything else a 400 naming the field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from utility.core import validation as valid
from utility.errors import Conflict, UtilityError


@given(st.text(max_size=50))
def test_clean_text_accepts_exactly_encodable_nul_free_text(value: str) -> None:
    ok = bool(value) and "\x00" not in value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        ok = False
    if ok:
        assert valid.clean_text(value, "f") == value
    else:
        with pytest.raises(UtilityError, match="'f'"):
            valid.clean_text(value, "f")


@given(st.one_of(st.integers(), st.booleans(), st.floats(), st.text(max_size=5), st.none()))
def test_integer_is_an_int_in_range_never_a_boolean(value: object) -> None:
    good = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100
    if good:
        assert valid.integer({"n": value}, "n", 1, 100) == value
    else:
        with pytest.raises(UtilityError, match="'n'"):
            valid.integer({"n": value}, "n", 1, 100)


@pytest.mark.parametrize("value", [0, 1, "true", None, 1.0])
def test_boolean_is_only_true_or_false(value: object) -> None:
    with pytest.raises(UtilityError, match="'b'"):
        valid.boolean({"b": value}, "b")
    assert valid.boolean({}, "b") is False and valid.boolean({"b": True}, "b") is True


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("10.9.9.9", "VAN address base"),
        ("127.0.0.5", "loopback"),
        ("224.1.1.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("0.0.0.0", "unspecified"),
        ("169.254.1.1", "link-local"),
        ("240.0.0.1", "reserved"),
        ("198.51.100.7", "a registered host's address"),
    ],
)
def test_public_ips_the_utility_cannot_give(ip: str, reason: str) -> None:
    hosts = ["qemu+ssh://root@198.51.100.7/system", "test:///default", "qemu:///system"]
    with pytest.raises(UtilityError, match=reason):
        valid.check_public_ips([ip], "10.0.0.0/8", hosts, 0)
    valid.check_public_ips(["198.51.100.8"], "10.0.0.0/8", hosts, 0)


def test_the_pool_is_bounded_and_a_uri_registered_once() -> None:
    with pytest.raises(UtilityError, match="at most"):
        valid.check_public_ips(["198.51.100.8"], "10.0.0.0/8", [], valid.MAX_PUBLIC_IPS)
    with pytest.raises(Conflict, match="'uri'"):
        valid.check_new_host_uri("test:///default", ["test:///default"])


@pytest.mark.parametrize("value", ["0", "-1", 0, -5, 10**30, True, "1e400", [1]])
def test_memory_is_a_positive_bounded_size(value: object) -> None:
    with pytest.raises(UtilityError, match="memory"):
        valid.memory({"memory": value})
    assert valid.memory({"memory": "4G"}) == 4 << 30
