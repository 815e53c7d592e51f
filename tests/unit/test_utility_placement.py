"""Placement: spread and pack over hosts with memory and max-VMs; clear refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utility.core.placement import HostRoom, VmDemand, place
from utility.errors import PlacementError

MiB = 1 << 20


def three_small_hosts() -> list[HostRoom]:
    return [
        HostRoom("h1", 512 * MiB, 3),
        HostRoom("h2", 512 * MiB, 3),
        HostRoom("h3", 256 * MiB, 3),
    ]


def test_spread_puts_each_vm_on_the_host_with_most_free_memory() -> None:
    vms = [VmDemand(p, 128 * MiB) for p in ("a", "b", "c")]
    # 512/512/256 free: a -> h1 (ties by name), b -> h2, then h1 and h2 (384) beat h3 (256)
    assert place(vms, three_small_hosts(), "spread") == {"a": "h1", "b": "h2", "c": "h1"}
    vms = [VmDemand(p, 128 * MiB) for p in "abcde"]
    assert sorted(place(vms, three_small_hosts(), "spread").values()).count("h3") == 1


def test_pack_fills_the_fullest_host_that_still_fits() -> None:
    vms = [VmDemand(p, 128 * MiB) for p in ("a", "b", "c")]
    assert sorted(place(vms, three_small_hosts(), "pack").values()) == ["h1", "h3", "h3"]


def test_current_use_counts() -> None:
    hosts = [
        HostRoom("h1", 512 * MiB, 3, used_memory=448 * MiB, used_vms=1),
        HostRoom("h2", 512 * MiB, 3, used_vms=3),
    ]
    with pytest.raises(PlacementError) as err:
        place([VmDemand("d", 128 * MiB)], hosts)
    assert "no host has room for d (128MiB)" in str(err.value)
    assert "64MiB on host h1" in str(err.value)
    assert "at their VM limit: h2" in str(err.value)


def test_refusal_lists_every_vm_that_does_not_fit() -> None:
    vms = [VmDemand("big", 600 * MiB), VmDemand("huge", 900 * MiB), VmDemand("ok", 64 * MiB)]
    with pytest.raises(PlacementError, match=r"huge \(900MiB\), big \(600MiB\)"):
        place(vms, three_small_hosts())


def test_no_hosts_and_unknown_policy() -> None:
    with pytest.raises(PlacementError, match="no host registered"):
        place([VmDemand("a", 1)], [])
    with pytest.raises(PlacementError, match="unknown placement policy"):
        place([], three_small_hosts(), "random")


@settings(max_examples=60, deadline=None)
@given(
    hosts=st.lists(st.tuples(st.integers(1, 64), st.integers(1, 4)), min_size=1, max_size=6),
    vms=st.lists(st.integers(1, 32), max_size=15),
    policy=st.sampled_from(["spread", "pack"]),
)
def test_placement_never_overcommits(
    hosts: list[tuple[int, int]], vms: list[int], policy: str
) -> None:
    rooms = [HostRoom(f"h{i}", m, n) for i, (m, n) in enumerate(hosts)]
    demands = [VmDemand(f"v{i}", m) for i, m in enumerate(vms)]
    try:
        chosen = place(demands, rooms, policy)
    except PlacementError:
        # both policies always succeed when one host alone could take every VM
        assert not any(m >= sum(vms) and n >= len(vms) for m, n in hosts)
        return
    assert set(chosen) == {d.path for d in demands}
    for room in rooms:
        mine = [d for d in demands if chosen[d.path] == room.name]
        assert sum(d.memory for d in mine) <= room.memory
        assert len(mine) <= room.max_vms


def test_ten_thousand_vms_on_a_thousand_hosts_fit_exactly() -> None:
    hosts = [HostRoom(f"h{i:04}", 10 * 256 * MiB, 10) for i in range(1000)]
    vms = [VmDemand(f"v{i}", 256 * MiB) for i in range(10_000)]
    for policy in ("spread", "pack"):
        chosen = place(vms, hosts, policy)
        assert len(chosen) == 10_000 and len(set(chosen.values())) == 1000
