"""Network addressing of a VAP: which segment each interface joins, VLANs, subnets, IPs, MACs.

Rules (paper, "Virtual Networks"):
- every VAN (root or sub-VAN) gets a VLAN tag from the administrator's pool, and the subnet
  `B.A.C.0/24` where B is the first octet of the configurable base /8 (default 10) and A.C are
  the VLAN tag's two bytes;
- an interface joins its VM's enclosing VAN segment, unless a VAN exports it through `vanIF`:
  then it joins the segment outside that VAN (the gateway's external interface gets an address of
  the parent VAN); an exported interface that reaches no parent VAN joins the public segment and
  gets a public IP from the administrator's pool;
- every interface gets a unique locally-administered unicast MAC (02:xx:xx:xx:xx:xx);
- inside a subnet, .1 is left for the host side of the bridge and VMs get .2 upwards in path
  order; .255 is broadcast.

Everything here is pure: callers pass what is already taken and get back what to reserve.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from utility.core.model_view import ModelView, join_path, leaf_name, parent_path
from utility.errors import PoolExhausted, UtilityError

PUBLIC = "<public>"
"""Segment key of interfaces that leave the VAP (exported, no parent VAN)."""

NETMASK = "255.255.255.0"


@dataclass(frozen=True)
class InterfaceAddress:
    """What the utility assigns to one interface."""

    path: str
    segment: str
    mac: str
    ip: str
    subnet: str
    netmask: str


@dataclass(frozen=True)
class Addressing:
    """All addresses of one VAP."""

    vlans: dict[str, int]
    interfaces: dict[str, InterfaceAddress]

    @property
    def public_ips(self) -> list[str]:
        """The public IPs this VAP holds."""
        return [a.ip for a in self.interfaces.values() if a.segment == PUBLIC]


def subnet_for_vlan(vlan: int, base: str = "10.0.0.0/8") -> ipaddress.IPv4Network:
    """The /24 of a VAN whose VLAN tag is `vlan`: base octet, then the tag's two bytes.

    Raises:
        UtilityError: the tag is outside 1..4094 or the base is not an IPv4 /8.
    """
    if not 1 <= vlan <= 4094:
        raise UtilityError(f"VLAN {vlan} is outside 1..4094")
    network = ipaddress.ip_network(base, strict=True)
    if not isinstance(network, ipaddress.IPv4Network) or network.prefixlen != 8:
        raise UtilityError(f"address base {base!r} must be an IPv4 /8 such as 10.0.0.0/8")
    first = int(network.network_address) >> 24
    return ipaddress.IPv4Network(f"{first}.{vlan >> 8}.{vlan & 0xFF}.0/24")


def parse_range(text: str) -> list[str]:
    """Expand "100-163" (VLANs) or "192.0.2.10-192.0.2.20" (IPs) or a single item.

    Raises:
        UtilityError: malformed, reversed, or more than 65,536 items; says which part.
    """
    low, _, high = text.partition("-")
    high = high or low
    if low.strip().isdigit() and high.strip().isdigit():
        lo, hi = int(low), int(high)
        if not 1 <= lo <= hi <= 4094:
            raise UtilityError(f"VLAN range {text!r}: need 1 <= first <= last <= 4094")
        return [str(v) for v in range(lo, hi + 1)]
    try:
        lo_ip, hi_ip = ipaddress.IPv4Address(low.strip()), ipaddress.IPv4Address(high.strip())
    except ValueError as exc:
        raise UtilityError(f"range {text!r}: {exc}") from None
    if int(hi_ip) < int(lo_ip) or int(hi_ip) - int(lo_ip) > 65535:
        raise UtilityError(f"IP range {text!r}: last must follow first, at most 65,536 addresses")
    return [str(ipaddress.IPv4Address(i)) for i in range(int(lo_ip), int(hi_ip) + 1)]


def segment_of(model: ModelView, iface_path: str) -> str:
    """The segment (a VAN path, or PUBLIC) interface `iface_path` is attached to."""
    vm_path = parent_path(iface_path)
    if vm_path is None or model.components[vm_path].kind != "vm":
        raise UtilityError(f"interface {iface_path!r} does not belong to a VM appliance")
    rel = leaf_name(iface_path)
    holder: str = vm_path
    van = model.enclosing_van(vm_path) if vm_path else None
    if van is None:
        return PUBLIC  # the root itself is a VM: all its interfaces face the outside
    exported = False
    while van is not None:
        rel_from_van = join_path(_relative(holder, van), rel) if holder != van else rel
        if model.components[van].first("vanIF") != rel_from_van:
            break
        exported = True
        rel = rel_from_van
        holder = van
        van = model.enclosing_van(van)
    if not exported:
        enclosing = model.enclosing_van(vm_path)
        return enclosing if enclosing is not None else PUBLIC
    return van if van is not None else PUBLIC


def _relative(path: str, ancestor: str) -> str:
    """`path` written relative to `ancestor` ("g.f" under "" is "g.f", under "g" is "f")."""
    if not ancestor:
        return path
    return path[len(ancestor) + 1 :]


def new_mac(rng: random.Random, taken: set[str]) -> str:
    """A locally-administered unicast MAC (02:...) not in `taken`; adds it to `taken`."""
    while True:
        tail = rng.getrandbits(40)
        mac = "02:" + ":".join(f"{(tail >> s) & 0xFF:02x}" for s in (32, 24, 16, 8, 0))
        if mac not in taken:
            taken.add(mac)
            return mac


def assign(
    model: ModelView,
    free_vlans: Sequence[int],
    free_public_ips: Sequence[str],
    taken_macs: Iterable[str],
    base: str = "10.0.0.0/8",
    rng: random.Random | None = None,
    keep: Addressing | None = None,
    taken_ips: Iterable[str] = (),
) -> Addressing:
    """Assign VLANs, IPs and MACs to every VAN and interface of `model`.

    Args:
        model: the evaluated VAP.
        free_vlans: the pool's unallocated VLAN tags, in the order to use them.
        free_public_ips: the pool's unallocated public IPs, in order.
        taken_macs: MACs any running VAP holds.
        base: the /8 the VAN subnets come from.
        rng: source of MAC randomness (tests pass a seeded one).
        keep: what the VAP holds already (an update): VANs keep their VLAN and interfaces
            still on the same segment keep MAC and IP; only what is new is allocated.
        taken_ips: IPs still held (an update's removed interfaces until it is applied).

    Raises:
        PoolExhausted: not enough VLANs, public IPs, or addresses in one VAN's /24.
    """
    rng = rng or random.SystemRandom()
    kept_vlans = dict(keep.vlans) if keep else {}
    vans = [c.path for c in model.vans()]
    new_vans = [v for v in vans if v not in kept_vlans]
    if len(new_vans) > len(free_vlans):
        raise PoolExhausted(
            f"VLAN pool exhausted: {len(new_vans)} VAN(s) need a VLAN, {len(free_vlans)} free "
            "(add more with `cui vlan add`)"
        )
    vlans = {v: kept_vlans[v] for v in vans if v in kept_vlans}
    vlans.update(zip(new_vans, free_vlans, strict=False))
    subnets = {van: subnet_for_vlan(vlan, base) for van, vlan in vlans.items()}
    public = list(free_public_ips)
    macs = set(taken_macs)
    result: dict[str, InterfaceAddress] = {}
    pending: list[tuple[str, str]] = []
    for vm in model.vms():
        for iface in model.interfaces(vm.path):
            segment = segment_of(model, iface.path)
            old = keep.interfaces.get(iface.path) if keep else None
            if old is not None and old.segment == segment:
                result[iface.path] = old
            else:
                pending.append((iface.path, segment))
    held = set(taken_ips)
    used = {seg: {a.ip for a in result.values() if a.segment == seg} | held for seg in vans}
    for path, segment in pending:
        if segment == PUBLIC:
            if not public:
                raise PoolExhausted(
                    f"public IP pool exhausted: {path} leaves the VAP and needs one "
                    "(add more with `cui publicip add`)"
                )
            ip = ipaddress.IPv4Address(public.pop(0))
            network = ipaddress.IPv4Network(f"{ip}/24", strict=False)
        else:
            network = subnets[segment]
            free = (network.network_address + n for n in range(2, 255))
            ip = next((a for a in free if str(a) not in used[segment]), None)  # type: ignore[assignment]
            if ip is None:
                raise PoolExhausted(f"VAN {segment or '(root)'}: more than 253 interfaces")
            used[segment].add(str(ip))
        result[path] = InterfaceAddress(
            path=path,
            segment=segment,
            mac=new_mac(rng, macs),
            ip=str(ip),
            subnet=str(network.network_address),
            netmask=NETMASK,
        )
    return Addressing(vlans=vlans, interfaces=result)


def overrides_for(
    model: ModelView, addressing: Addressing, names: dict[str, str]
) -> dict[str, str]:
    """The utility-assigned values (`cvl`'s `assigned=`) that fill the pending parameters.

    Args:
        model: the evaluated VAP (its `pending` list says which keys the CVL wants).
        addressing: what `assign` returned.
        names: component path -> the `name` to give it.
    """
    values: dict[str, str] = {}
    for iface in addressing.interfaces.values():
        values[join_path(iface.path, "mac")] = iface.mac
        values[join_path(iface.path, "ip")] = iface.ip
        values[join_path(iface.path, "subnet")] = iface.subnet
        values[join_path(iface.path, "netmask")] = iface.netmask
    for path, name in names.items():
        values[join_path(path, "name")] = name
    pending = set(model.pending)
    return {k: v for k, v in values.items() if k in pending}
