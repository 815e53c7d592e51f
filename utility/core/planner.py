"""The pure planner: `plan = diff(current, desired)`.

Start is the diff from nothing, stop the diff to nothing (or to the state without one
component), update the diff between the running state and the re-evaluated one. Every action
names the actions it needs finished first, so the executor can run independent ones in parallel
and the plan can be printed before anything happens (`--dry-run`).

Symbols: `+` start, `-` remove (stop, data to the attic), `~` update version (stop, new program
disks, start), `↻` resend changed parameters to a running VM, `■` stop (kept), and network
`+net`/`-net` for the per-segment bridges, `~net` for a bridge whose VXLAN flood list changes
(a VM of its segment came to or left another host; see `utility.core.overlay`).

Network actions carry the flood list (`peers`) their VXLAN port must have afterwards. A VM's
boot needs every network action of its segments, on any host: its peers must reach it.
A `~net` that drops hosts waits for the VMs stopping there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from utility.core import overlay
from utility.core.desired_state import Network, VapState, Vm


class Op(StrEnum):
    """What an action does."""

    NETWORK_UP = "network-up"
    NETWORK_LINK = "network-link"
    START = "start"
    UPDATE = "update"
    RESEND = "resend"
    STOP = "stop"
    REMOVE = "remove"
    NETWORK_DOWN = "network-down"


SYMBOLS = {
    Op.NETWORK_UP: "+net",
    Op.NETWORK_LINK: "~net",
    Op.START: "+",
    Op.UPDATE: "~",
    Op.RESEND: "↻",
    Op.STOP: "■",
    Op.REMOVE: "-",
    Op.NETWORK_DOWN: "-net",
}


@dataclass(frozen=True)
class Action:
    """One step of a plan.

    Attributes:
        op: what to do.
        key: unique within the plan ("vm:d", "net:host/col-v100").
        vm: the VM as it should be (START, UPDATE, RESEND) or as it is (STOP, REMOVE).
        old: for UPDATE, the VM as it runs now.
        network: for network actions.
        needs: keys of actions that must finish first.
        changed: for RESEND and UPDATE, the parameter keys whose values change.
        peers: for NETWORK_UP and NETWORK_LINK of a VXLAN-capable network, the underlay
            addresses of the other hosts its port floods to afterwards.
    """

    op: Op
    key: str
    vm: Vm | None = None
    old: Vm | None = None
    network: Network | None = None
    needs: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()

    @property
    def symbol(self) -> str:
        """The plan symbol of this action."""
        return SYMBOLS[self.op]

    def describe(self) -> str:
        """One line for people: symbol, subject, and what changes."""
        if self.network is not None:
            n = self.network
            tag = f" vlan {n.vlan}" if n.vlan is not None else ""
            if overlay.stretchable(n) and self.op is not Op.NETWORK_DOWN:
                tag = f" vni {n.vlan}, peers {', '.join(self.peers) or 'none'}"
            return f"{self.symbol} network {n.name} on {n.host}{tag}"
        assert self.vm is not None
        vm = self.vm
        version = (vm.origin or {}).get("version")
        label = f"{vm.type} v{version}" if version else vm.type
        text = f"{self.symbol} {vm.path or '(root)'} ({label}) on {vm.host}"
        if self.op is Op.UPDATE and self.old is not None:
            old_version = (self.old.origin or {}).get("version")
            text += f" (from v{old_version})" if old_version != version else " (reconfigured)"
        if self.changed:
            text += ": " + ", ".join(self.changed)
        return text


@dataclass(frozen=True)
class Plan:
    """An ordered list of actions; order is one valid serial order of the needs graph."""

    actions: tuple[Action, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.actions)

    def lines(self) -> list[str]:
        """The plan as printed by `cui update` and `--dry-run`."""
        return [a.describe() for a in self.actions]

    def to_json(self) -> list[dict[str, object]]:
        """The plan for tools (`--json`)."""
        return [
            {
                "op": str(a.op),
                "symbol": a.symbol,
                "key": a.key,
                "path": a.vm.path if a.vm else None,
                "network": a.network.name if a.network else None,
                "host": a.vm.host if a.vm else (a.network.host if a.network else None),
                "needs": list(a.needs),
                "changed": list(a.changed),
                "peers": list(a.peers),
                "text": a.describe(),
            }
            for a in self.actions
        ]


def vm_key(path: str) -> str:
    """Plan key of a VM action."""
    return f"vm:{path}"


def net_key(network: Network) -> str:
    """Plan key of a network action."""
    return f"net:{network.host}/{network.name}"


def _net_id(n: Network) -> tuple[str, str]:
    return (n.host, n.name)


def _rebuild_fields(vm: Vm) -> tuple[object, ...]:
    """What cannot change without restarting the VM: image, host, hardware, NICs, disks."""
    return (
        (vm.origin or {}).get("url"),
        (vm.origin or {}).get("version"),
        vm.type,
        vm.host,
        vm.domain,
        vm.memory,
        vm.vcpus,
        tuple(sorted(vm.os.items())),  # a mapping: stored state comes back key-sorted
        vm.disks,
        tuple((i.name, i.mac, i.network) for i in vm.interfaces),
    )


def changed_params(old: Vm, new: Vm) -> tuple[str, ...]:
    """Parameter keys whose values differ (sensitive ones compared masked)."""
    a, b = old.masked().param_map(), new.masked().param_map()
    return tuple(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))


def diff(
    current: VapState | None,
    desired: VapState | None,
    *,
    vanished: Op = Op.STOP,
) -> Plan:
    """The actions that take `current` to `desired`.

    Args:
        current: what runs now (None: nothing).
        desired: what should run (None: nothing).
        vanished: the op for a VM that runs now but is not desired: STOP (stop, keep its
            directory) or REMOVE (an update dropped the component: stop, move to the attic).
    """
    now = {vm.path: vm for vm in (current.vms if current else ())}
    want = {vm.path: vm for vm in (desired.vms if desired else ())}
    nets_now = {_net_id(n): n for n in (current.networks if current else ())}
    nets_want = {_net_id(n): n for n in (desired.networks if desired else ())}

    new_nets = [nets_want[k] for k in sorted(nets_want) if k not in nets_now]
    gone_nets = [nets_now[k] for k in sorted(nets_now) if k not in nets_want]
    peers_now = overlay.peers(nets_now.values())
    peers_want = overlay.peers(nets_want.values())
    relinked = [
        nets_want[k]
        for k in sorted(nets_want)
        if k in nets_now and peers_now.get(k, ()) != peers_want.get(k, ())
    ]
    new_net_keys = {_net_id(n): net_key(n) for n in new_nets}
    # every network action of a segment, on any host: a VM of that segment boots after them
    segment_nets: dict[str, list[str]] = {}
    for n in [*new_nets, *relinked]:
        segment_nets.setdefault(n.name, []).append(net_key(n))

    ops: dict[str, Action] = {}
    for path in sorted(set(now) - set(want)):
        ops[path] = Action(op=vanished, key=vm_key(path), vm=now[path])
    for path in sorted(set(want) - set(now)):
        ops[path] = Action(op=Op.START, key=vm_key(path), vm=want[path])
    for path in sorted(set(want) & set(now)):
        old, new = now[path], want[path]
        params = changed_params(old, new)
        if _rebuild_fields(old) != _rebuild_fields(new):
            ops[path] = Action(op=Op.UPDATE, key=vm_key(path), vm=new, old=old, changed=params)
        elif params:
            ops[path] = Action(op=Op.RESEND, key=vm_key(path), vm=new, old=old, changed=params)

    actions: list[Action] = [
        Action(op=Op.NETWORK_UP, key=net_key(n), network=n, peers=peers_want.get(_net_id(n), ()))
        for n in new_nets
    ]
    halting_ops = {p for p, a in ops.items() if a.op in (Op.STOP, Op.REMOVE)}
    for n in relinked:
        dropped = set(peers_now.get(_net_id(n), ())) - set(peers_want.get(_net_id(n), ()))
        leaving = [
            vm_key(p)
            for p in sorted(halting_ops)
            if any(
                i.network == n.name
                and nets_now.get((now[p].host, n.name)) is not None
                and nets_now[(now[p].host, n.name)].underlay in dropped
                for i in now[p].interfaces
            )
        ]
        actions.append(
            Action(
                op=Op.NETWORK_LINK,
                key=net_key(n),
                network=n,
                peers=peers_want.get(_net_id(n), ()),
                needs=tuple(leaving),
            )
        )
    booting = {p for p, a in ops.items() if a.op in (Op.START, Op.UPDATE)}
    halting = halting_ops
    for path in _boot_order(want, booting):
        action = ops[path]
        vm = want[path]
        needs = [
            new_net_keys[(vm.host, i.network)]
            for i in vm.interfaces
            if (vm.host, i.network) in new_net_keys
        ]
        needs += [k for i in vm.interfaces for k in segment_nets.get(i.network, ())]
        needs += [vm_key(p) for p in vm.needs if p in booting]
        actions.append(_with_needs(action, needs))
    for path in sorted(p for p, a in ops.items() if a.op is Op.RESEND):
        # new parameters may point at a provider being (re)started: resend after it is ready
        actions.append(
            _with_needs(ops[path], [vm_key(p) for p in want[path].needs if p in booting])
        )
    for path in _halt_order(now, halting):
        dependents = [vm_key(p) for p, vm in now.items() if path in vm.needs and p in halting]
        actions.append(_with_needs(ops[path], dependents))
    for n in gone_nets:
        users = [
            vm_key(p)
            for p, vm in now.items()
            if p in ops
            and ops[p].op in (Op.STOP, Op.REMOVE, Op.UPDATE)
            and vm.host == n.host
            and any(i.network == n.name for i in vm.interfaces)
        ]
        actions.append(
            Action(op=Op.NETWORK_DOWN, key=net_key(n), network=n, needs=tuple(sorted(set(users))))
        )
    return Plan(actions=_serial(actions))


def _serial(actions: list[Action]) -> tuple[Action, ...]:
    """`actions` in a serial order of their needs, keeping the given order where it is one
    (a `~net` that waits for a stop moves after it, and the boots that need it follow)."""
    keys = {a.key for a in actions}
    done: set[str] = set()
    order: list[Action] = []
    pending = list(actions)
    while pending:
        ready = next(
            (a for a in pending if all(n in done or n not in keys for n in a.needs)), pending[0]
        )  # pending[0]: a cycle cannot be built above; never loop forever
        pending.remove(ready)
        order.append(ready)
        done.add(ready.key)
    return tuple(order)


def _with_needs(action: Action, needs: Iterable[str]) -> Action:
    return Action(
        op=action.op,
        key=action.key,
        vm=action.vm,
        old=action.old,
        network=action.network,
        needs=tuple(sorted(set(needs))),
        changed=action.changed,
        peers=action.peers,
    )


def _boot_order(vms: dict[str, Vm], subset: set[str]) -> list[str]:
    """`subset` in an order where every VM comes after the VMs it needs."""
    order: list[str] = []
    placed: set[str] = set()
    pending = sorted(subset)
    while pending:
        progress = [p for p in pending if all(n in placed or n not in subset for n in vms[p].needs)]
        if not progress:
            progress = pending[:1]  # a cycle was refused by the checks; never loop forever
        for p in progress:
            order.append(p)
            placed.add(p)
        pending = [p for p in pending if p not in placed]
    return order


def _halt_order(vms: dict[str, Vm], subset: set[str]) -> list[str]:
    """`subset` in an order where dependents come before the VMs they need."""
    return list(reversed(_boot_order(vms, subset)))


def start_plan(desired: VapState) -> Plan:
    """The plan that starts a VAP from nothing."""
    return diff(None, desired)


def stop_plan(current: VapState, component: str | None = None) -> Plan:
    """The plan that stops a VAP, or only `component` and what lies under it."""
    if component is None:
        return diff(current, None)
    return diff(current, current.without(component))
