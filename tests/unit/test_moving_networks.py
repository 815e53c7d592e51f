"""The network side of a move (pure): a VM's VAN segment follows it across VXLAN hosts.

While the VM migrates, the segment is on the source and the target and every host floods to
both; afterwards the source is dropped from the flood lists and its network goes when no VM
uses it. The segment's network on the target has the target's own underlay address.
"""

from __future__ import annotations

from utility.core.desired_state import Interface, Network, VapState, Vm
from utility.core.moves import relocate
from utility.core.planner import Op
from utility.service.moving import _both, _network_plan

UNDERLAYS = {"h1": "10.0.0.1", "h2": "10.0.0.2", "h3": "10.0.0.3"}


def vm(path: str, host: str) -> Vm:
    return Vm(
        path=path, type="T", origin=None, host=host, domain=f"col-1-{path}", memory=1 << 26,
        vcpus=1, vm_dir="/nowhere", guest_socket="/nowhere/s", disks=(),
        interfaces=(Interface("ethernet0", f"52:54:00:00:00:0{path}", "10.1.0.2",
                              "255.255.255.0", "col-1-van", "van"),),
        params=(), sensitive=(), provides=(), requires=(), needs=(),
    )  # fmt: skip


def net(host: str) -> Network:
    return Network("col-1-van", "colbr1", host, "van", 7, UNDERLAYS[host])


def links(plan: object) -> dict[tuple[str, str], tuple[str, ...]]:
    return {
        (a.op.value, a.network.host): a.peers  # type: ignore[union-attr]
        for a in plan.actions  # type: ignore[attr-defined]
    }


def test_a_moved_vm_takes_its_segment_along_and_every_flood_list_follows() -> None:
    state = VapState("o/v", "V", {"van": 7}, (vm("1", "h1"), vm("2", "h2")), (net("h1"), net("h2")))
    moved = relocate(state, {"1": "h3"}, UNDERLAYS)
    assert {(n.host, n.underlay) for n in moved.networks} == {
        ("h2", "10.0.0.2"),
        ("h3", "10.0.0.3"),  # the target's own address, not the template's
    }
    during = _both(state, moved)
    before = _network_plan(state, during)
    assert links(before) == {
        (Op.NETWORK_UP.value, "h3"): ("10.0.0.1", "10.0.0.2"),
        (Op.NETWORK_LINK.value, "h1"): ("10.0.0.2", "10.0.0.3"),
        (Op.NETWORK_LINK.value, "h2"): ("10.0.0.1", "10.0.0.3"),
    }
    after = _network_plan(during, moved)
    assert links(after) == {
        (Op.NETWORK_LINK.value, "h2"): ("10.0.0.3",),
        (Op.NETWORK_LINK.value, "h3"): ("10.0.0.2",),
        (Op.NETWORK_DOWN.value, "h1"): (),
    }
    assert not [a for a in (*before.actions, *after.actions) if a.vm is not None]  # VMs untouched
    back = _network_plan(during, state)  # a failed migration: as before
    assert {(a.op, a.network.host) for a in back.actions if a.network} == {
        (Op.NETWORK_DOWN, "h3"),
        (Op.NETWORK_LINK, "h1"),
        (Op.NETWORK_LINK, "h2"),
    }
