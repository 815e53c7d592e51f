"""The state of a VAP as plain frozen data: what should run where, with which disks and addresses.

`allocation.desired_state` builds it from a model, pools and hosts; `planner.diff` compares two
of them; the state DB stores it as JSON (sensitive values masked: they exist only in memory).
A `VapState` lists the VMs that run (or should run): stopping a component is a state without it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MASK = "********"


@dataclass(frozen=True)
class Disk:
    """One disk of a VM: a program disk (overlay over `base`) or a data disk (kept forever)."""

    target: str
    path: str
    role: str  # "program" | "data"
    size: int = 0
    base: str = ""


@dataclass(frozen=True)
class Interface:
    """One NIC: its CVL name, addresses and the libvirt network it joins."""

    name: str
    mac: str
    ip: str
    netmask: str
    network: str
    segment: str
    mtu: int | None = None  # told to the guest (1450 on a VXLAN-capable host), None: 1500


@dataclass(frozen=True)
class Network:
    """An isolated libvirt network (bridge, no uplink) for one segment on one host.

    `vlan` is the segment's number from the pool (the VLAN tag, and the VXLAN VNI); `underlay`
    is the host's underlay address when it has one: then the bridge gets a VXLAN port
    (`utility.core.overlay`).
    """

    name: str
    bridge: str
    host: str
    segment: str
    vlan: int | None
    underlay: str | None = None


@dataclass(frozen=True)
class Vm:
    """One component VM appliance as it should run."""

    path: str
    type: str
    origin: Mapping[str, str] | None
    host: str
    domain: str
    memory: int
    vcpus: int
    vm_dir: str
    guest_socket: str
    disks: tuple[Disk, ...]
    interfaces: tuple[Interface, ...]
    params: tuple[tuple[str, tuple[str, ...]], ...]
    sensitive: tuple[str, ...]
    provides: tuple[str, ...]
    requires: tuple[str, ...]
    needs: tuple[str, ...]
    os: Mapping[str, str] = field(default_factory=dict)

    def param_map(self) -> dict[str, tuple[str, ...]]:
        """Parameters as a dict (keys like `domain`, `ethernet0.ip`)."""
        return dict(self.params)

    def masked(self) -> Vm:
        """A copy whose sensitive values are replaced by MASK: the only form that is stored."""
        hidden = set(self.sensitive)
        params = tuple((k, tuple(MASK for _ in v) if k in hidden else v) for k, v in self.params)
        return dataclasses.replace(self, params=params)


@dataclass(frozen=True)
class VapState:
    """A whole VAP: its VMs (the running ones, for a current state) and networks."""

    cvl_path: str
    """The VAP's name, `owner/short name` (states stored before VAPs were kept by content hold
    the CVL file's path; the stored JSON keeps the key)."""
    appliance: str
    vlans: Mapping[str, int]
    vms: tuple[Vm, ...]
    networks: tuple[Network, ...]
    imports: tuple[Mapping[str, Any], ...] = ()

    def vm(self, path: str) -> Vm | None:
        """The VM at `path`, or None."""
        for vm in self.vms:
            if vm.path == path:
                return vm
        return None

    def masked(self) -> VapState:
        """A copy safe to store: every sensitive value masked."""
        return dataclasses.replace(self, vms=tuple(vm.masked() for vm in self.vms))

    def without(self, prefix: str) -> VapState:
        """This state minus the VMs at or under component path `prefix` (a partial stop)."""
        keep = tuple(
            vm for vm in self.vms if not (vm.path == prefix or vm.path.startswith(prefix + "."))
        )
        used = {(i.network, vm.host) for vm in keep for i in vm.interfaces}
        nets = tuple(n for n in self.networks if (n.name, n.host) in used)
        return dataclasses.replace(self, vms=keep, networks=nets)


def to_json(state: VapState) -> str:
    """Serialise a state, sensitive values masked."""
    return json.dumps(dataclasses.asdict(state.masked()), sort_keys=True)


def from_json(text: str) -> VapState:
    """Inverse of `to_json`."""
    raw = json.loads(text)
    vms = []
    for v in raw["vms"]:
        vms.append(
            Vm(
                **{
                    **v,
                    "disks": tuple(Disk(**d) for d in v["disks"]),
                    "interfaces": tuple(Interface(**i) for i in v["interfaces"]),
                    "params": tuple((k, tuple(vals)) for k, vals in v["params"]),
                    "sensitive": tuple(v["sensitive"]),
                    "provides": tuple(v["provides"]),
                    "requires": tuple(v["requires"]),
                    "needs": tuple(v["needs"]),
                }
            )
        )
    return VapState(
        cvl_path=raw["cvl_path"],
        appliance=raw["appliance"],
        vlans=raw["vlans"],
        vms=tuple(vms),
        networks=tuple(Network(**n) for n in raw["networks"]),
        imports=tuple(raw.get("imports", ())),
    )
