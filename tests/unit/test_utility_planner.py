"""The pure planner: start, stop, partial stop and update are diffs between states."""

from __future__ import annotations

import dataclasses

from utility.core.dependencies import Services, boot_needs, find_cycle, waves
from utility.core.desired_state import (
    MASK,
    Disk,
    Interface,
    Network,
    VapState,
    Vm,
    from_json,
    to_json,
)
from utility.core.planner import Op, diff, start_plan, stop_plan


def vm(
    path: str,
    needs: tuple[str, ...] = (),
    version: str = "1",
    host: str = "h1",
    **params: tuple[str, ...],
) -> Vm:
    return Vm(
        path=path,
        type=path.upper(),
        origin={"url": f"http://r/{path}", "version": version, "name": path, "cvl": f"{path}.cvl"},
        host=host,
        domain=f"col-1-{path}",
        memory=64 << 20,
        vcpus=1,
        vm_dir=f"/v/{path}",
        guest_socket=f"/v/{path}/guest.sock",
        disks=(Disk("vda", f"/v/{path}/vda.qcow2", "program", base="/b.qcow2"),),
        interfaces=(
            Interface(
                "ethernet0",
                "02:00:00:00:00:0" + str(len(path)),
                "10.0.100.2",
                "255.255.255.0",
                "col-v100",
                "",
            ),
        ),
        params=tuple(sorted({"domain": ("acme.org",), **params}.items())),
        sensitive=("password",) if "password" in params else (),
        provides=(),
        requires=(),
        needs=needs,
    )


def state(*vms: Vm) -> VapState:
    hosts = sorted({v.host for v in vms})
    return VapState(
        cvl_path="/a.cvl",
        appliance="A",
        vlans={"": 100},
        vms=vms,
        networks=tuple(Network("col-v100", "col-v100", h, "", 100) for h in hosts),
    )


ACME = state(vm("d"), vm("l", needs=("d",)), vm("f"))


def test_start_is_the_diff_from_nothing_with_networks_first_and_providers_before_users() -> None:
    plan = start_plan(ACME)
    ops = {a.key: a for a in plan.actions}
    assert [a.op for a in plan.actions][0] is Op.NETWORK_UP
    assert ops["vm:l"].needs == ("net:h1/col-v100", "vm:d")
    assert ops["vm:d"].needs == ("net:h1/col-v100",)
    order = [a.key for a in plan.actions]
    assert order.index("vm:d") < order.index("vm:l")
    assert plan.lines()[1].startswith("+ d (D v1) on h1")


def test_stop_is_the_diff_to_nothing_in_reverse_order() -> None:
    plan = stop_plan(ACME)
    ops = {a.key: a for a in plan.actions}
    assert ops["vm:d"].needs == ("vm:l",)  # l stops before the DNS it requires
    assert ops["net:h1/col-v100"].op is Op.NETWORK_DOWN
    assert set(ops["net:h1/col-v100"].needs) == {"vm:d", "vm:l", "vm:f"}
    assert all(a.op in (Op.STOP, Op.NETWORK_DOWN) for a in plan.actions)


def test_stopping_one_component_touches_only_it_and_keeps_shared_networks() -> None:
    plan = stop_plan(ACME, "l")
    assert [(a.op, a.key) for a in plan.actions] == [(Op.STOP, "vm:l")]


def test_network_on_a_host_goes_when_its_last_vm_goes() -> None:
    two_hosts = state(vm("d"), vm("f", host="h2"))
    plan = stop_plan(two_hosts, "f")
    assert [a.key for a in plan.actions] == ["vm:f", "net:h2/col-v100"]


def test_update_diff_has_exactly_the_four_kinds_of_action() -> None:
    now = state(vm("d"), vm("l", needs=("d",)), vm("f"), vm("old"))
    want = state(
        vm("d", version="2"), vm("l", needs=("d",), domain=("acme.com",)), vm("f"), vm("new")
    )
    plan = diff(now, want, vanished=Op.REMOVE)
    got = {a.key: (a.symbol, a.changed) for a in plan.actions}
    assert got == {
        "vm:d": ("~", ()),
        "vm:l": ("↻", ("domain",)),
        "vm:old": ("-", ()),
        "vm:new": ("+", ()),
    }
    assert "(from v1)" in next(a.describe() for a in plan.actions if a.key == "vm:d")


def test_identical_states_need_no_plan() -> None:
    assert not diff(ACME, ACME)


def test_a_state_read_back_from_storage_needs_no_plan_whatever_its_os_key_order() -> None:
    # Stored state is JSON with sorted keys; a fresh evaluation lists `os` in the domain XML's
    # order. Found on real VMs: every VM was restarted by a `cui update` that only resent.
    running = state(dataclasses.replace(vm("d"), os={"machine": "pc", "acpi": "on"}))
    assert list(from_json(to_json(running)).vms[0].os) == ["acpi", "machine"]
    assert not diff(from_json(to_json(running)), running)
    resent = state(
        dataclasses.replace(vm("d", forwarders=("192.0.2.54",)), os={"machine": "pc", "acpi": "on"})
    )
    assert [a.op for a in diff(from_json(to_json(running)), resent).actions] == [Op.RESEND]


def test_sensitive_values_are_masked_when_stored_and_compared_masked() -> None:
    secret = state(vm("d", password=("hunter2",)))
    text = to_json(secret)
    assert "hunter2" not in text and MASK in text
    back = from_json(text)
    assert back.vms[0].param_map()["password"] == (MASK,)
    assert back.vms[0].disks == secret.vms[0].disks
    assert dataclasses.replace(back, vms=secret.vms) == secret


def test_dependencies_unprovided_cycle_and_waves() -> None:
    needs, problems = boot_needs(
        {
            "d": Services(("DNS",), ()),
            "l": Services(("LDAP",), ("DNS",)),
            "m": Services((), ("LDAP", "SMTP")),
        }
    )
    assert needs == {"d": (), "l": ("d",), "m": ("l",)}
    assert problems == ["m requires 'SMTP' but no component provides it"]
    assert waves(needs) == [["d"], ["l"], ["m"]]
    _, problems = boot_needs({"a": Services(("A",), ("B",)), "b": Services(("B",), ("A",))})
    assert problems == ["dependency cycle: a -> b -> a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_a_dependent_is_not_restarted_with_its_provider_but_resent_after_it() -> None:
    now = state(vm("d"), vm("l", needs=("d",)), vm("w", needs=("l",)))
    want = state(
        vm("d", version="2"), vm("l", needs=("d",), domain=("acme.com",)), vm("w", needs=("l",))
    )
    plan = diff(now, want)
    ops = {a.key: a for a in plan.actions}
    assert set(ops) == {"vm:d", "vm:l"}  # w is not touched at all
    assert ops["vm:d"].op is Op.UPDATE and ops["vm:l"].op is Op.RESEND
    assert ops["vm:l"].needs == ("vm:d",)
