"""Addressing: VLAN subnets, segments (exported interfaces, sub-VANs), unique MACs and IPs."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from utility.core.addresses import PUBLIC, assign, parse_range, segment_of, subnet_for_vlan
from utility.core.model_view import ModelView
from utility.errors import PoolExhausted, UtilityError


def comp(kind: str, type_: str = "T", **params: list[str]) -> dict[str, object]:
    return {
        "type": type_,
        "kind": kind,
        "params": params,
        "sensitive": [],
        "required": [],
        "origin": None,
    }


def acme() -> ModelView:
    """The shape of the paper's AcmeGroupware (Figure 3)."""
    return ModelView.from_json(
        {
            "appliance": "AcmeGroupware",
            "components": {
                "": comp("van", vanIF=["f.ethernet1"]),
                "d": comp("vm", "DNS", vanIF=["ethernet0"]),
                "d.ethernet0": comp("interface"),
                "l": comp("vm", "OpenLDAP", vanIF=["ethernet0"]),
                "l.ethernet0": comp("interface"),
                "f": comp("vm", "Firewall", vanIF=["ethernet0"]),
                "f.ethernet0": comp("interface"),
                "f.ethernet1": comp("interface"),
            },
            "pending": [],
        }
    )


def nested() -> ModelView:
    """A root VAN r with a sub-VAN g whose gateway g.f exports ethernet1 into r."""
    return ModelView.from_json(
        {
            "appliance": "Outer",
            "components": {
                "": comp("van", vanIF=["w.ethernet1"]),
                "w": comp("vm"),
                "w.ethernet0": comp("interface"),
                "w.ethernet1": comp("interface"),
                "g": comp("van", vanIF=["f.ethernet1"]),
                "g.f": comp("vm"),
                "g.f.ethernet0": comp("interface"),
                "g.f.ethernet1": comp("interface"),
                "g.x": comp("vm"),
                "g.x.ethernet0": comp("interface"),
            },
            "pending": [],
        }
    )


def test_vlan_bytes_become_the_second_and_third_octet() -> None:
    assert subnet_for_vlan(100) == ipaddress.IPv4Network("10.0.100.0/24")
    assert subnet_for_vlan(0xE12) == ipaddress.IPv4Network("10.14.18.0/24")
    assert subnet_for_vlan(100, "172.0.0.0/8") == ipaddress.IPv4Network("172.0.100.0/24")


@given(st.integers(1, 4094), st.integers(1, 4094))
def test_distinct_vlans_give_disjoint_subnets(a: int, b: int) -> None:
    sa, sb = subnet_for_vlan(a), subnet_for_vlan(b)
    assert (a == b) == (sa == sb)
    assert sa.prefixlen == 24 and sa.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))


@pytest.mark.parametrize("bad", [0, 4095, -1])
def test_vlan_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(UtilityError, match="outside 1..4094"):
        subnet_for_vlan(bad)


def test_address_base_must_be_a_slash_8() -> None:
    with pytest.raises(UtilityError, match="/8"):
        subnet_for_vlan(5, "10.1.0.0/16")


def test_ranges_expand_and_bad_ones_say_why() -> None:
    assert parse_range("100-103") == ["100", "101", "102", "103"]
    assert parse_range("192.0.2.254-192.0.3.1") == [
        "192.0.2.254",
        "192.0.2.255",
        "192.0.3.0",
        "192.0.3.1",
    ]
    with pytest.raises(UtilityError, match="163-100"):
        parse_range("163-100")
    with pytest.raises(UtilityError, match="not-an-ip"):
        parse_range("not-an-ip")


def test_firewall_exports_ethernet1_to_the_public_segment() -> None:
    model = acme()
    assert segment_of(model, "f.ethernet1") == PUBLIC
    assert {segment_of(model, p) for p in ("d.ethernet0", "l.ethernet0", "f.ethernet0")} == {""}


def test_sub_van_gateway_external_interface_joins_the_parent_van() -> None:
    model = nested()
    assert segment_of(model, "g.f.ethernet1") == ""
    assert segment_of(model, "g.f.ethernet0") == "g"
    assert segment_of(model, "g.x.ethernet0") == "g"
    assert segment_of(model, "w.ethernet1") == PUBLIC


def test_acme_addresses_share_one_subnet_and_the_firewall_gets_a_public_ip() -> None:
    result = assign(acme(), [100, 101], ["192.0.2.10", "192.0.2.11"], [], rng=random.Random(1))
    assert result.vlans == {"": 100}
    inside = [result.interfaces[p] for p in ("d.ethernet0", "l.ethernet0", "f.ethernet0")]
    assert all(ipaddress.IPv4Address(a.ip) in subnet_for_vlan(100) for a in inside)
    assert len({a.ip for a in inside}) == 3
    assert result.interfaces["f.ethernet1"].ip == "192.0.2.10"
    assert result.public_ips == ["192.0.2.10"]
    macs = [a.mac for a in result.interfaces.values()]
    assert len(set(macs)) == len(macs)
    assert all(int(m.split(":")[0], 16) & 0b11 == 0b10 for m in macs)  # local, unicast


def test_nested_vans_get_one_vlan_each() -> None:
    result = assign(nested(), [7, 9], ["198.51.100.1"], [], rng=random.Random(2))
    assert result.vlans == {"": 7, "g": 9}
    assert ipaddress.IPv4Address(result.interfaces["g.f.ethernet1"].ip) in subnet_for_vlan(7)
    assert ipaddress.IPv4Address(result.interfaces["g.x.ethernet0"].ip) in subnet_for_vlan(9)


def test_taken_macs_are_never_reused() -> None:
    rng = random.Random(3)
    first = assign(acme(), [100], ["192.0.2.1"], [], rng=random.Random(3))
    taken = [a.mac for a in first.interfaces.values()]
    second = assign(acme(), [101], ["192.0.2.2"], taken, rng=rng)  # same seed: same draws
    assert not {a.mac for a in second.interfaces.values()} & set(taken)


def test_exhausted_pools_are_refused_clearly() -> None:
    with pytest.raises(PoolExhausted, match="VLAN pool exhausted.*cui vlan add"):
        assign(acme(), [], ["192.0.2.1"], [])
    with pytest.raises(PoolExhausted, match="public IP pool exhausted: f.ethernet1"):
        assign(acme(), [100], [], [])
