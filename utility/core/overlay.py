"""VAN segments that span hosts: VXLAN over the hosts' underlay addresses (pure).

A VAN segment is one libvirt network (a Linux bridge) per host that carries VMs of it. On a host
registered with an underlay address, that bridge also gets a VXLAN port whose VNI is the
segment's number from the pool that hands out VLAN tags (so the paper's `10.A.B.0/24` rule
holds for the VNI as it did for the tag), with unicast head-end replication: one all-zeros
flood entry per other host carrying the segment (`bridge fdb append 00:00:00:00:00:00 dev PORT
dst PEER`), as Flannel and EVPN-less VXLAN deployments do. MACs behind a peer are learned.

MTU: the underlay is left alone (1500 on an ordinary network) and every interface on such a
host's VAN bridges is told the smaller MTU, underlay minus the encapsulation (50 bytes over
IPv4): the bridge, its taps and the virtio NIC (`host_mtu`) all get it through libvirt.
Everything here is plain data in, plain data out; `utility.adapters.vxlan_ports` applies it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from utility.core.desired_state import Network
from utility.errors import UtilityError

VXLAN_UDP_PORT = 4789
"""IANA's VXLAN port; hosts must let it through between underlay addresses."""

UNDERLAY_MTU = 1500
"""The underlay MTU the utility assumes (an ordinary Ethernet)."""

VXLAN_OVERHEAD = 50
"""Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 bytes."""

SEGMENT_MTU = UNDERLAY_MTU - VXLAN_OVERHEAD
"""What guests on a VXLAN-capable host are told: 1450."""

PORT_MAX = 15


def port_name(bridge: str) -> str:
    """The VXLAN port of a segment bridge: `col-v100` -> `col-vx100` (at most 15 characters).

    Raises:
        UtilityError: `bridge` is not a VAN segment bridge (`<prefix>-v<number>`).
    """
    if not is_segment_bridge(bridge):
        raise UtilityError(f"bridge {bridge!r} is not a VAN segment bridge (<prefix>-v<VNI>)")
    head, _, tag = bridge.rpartition("-v")
    name = f"{head}-vx{tag}"
    if len(name) > PORT_MAX:
        raise UtilityError(f"VXLAN port name {name!r} is longer than {PORT_MAX} characters")
    return name


def is_segment_bridge(bridge: str) -> bool:
    """Whether `bridge` is named like a numbered VAN segment's (and so may have a port)."""
    head, sep, tag = bridge.rpartition("-v")
    return bool(sep and head and tag.isdigit())


def stretchable(network: Network) -> bool:
    """Whether a network gets a VXLAN port: a numbered VAN segment on a host with an underlay."""
    return network.vlan is not None and network.underlay is not None


def segment_mtu(underlay: str | None) -> int | None:
    """The MTU interfaces on a VAN bridge are told: None (the default 1500) without an underlay."""
    return SEGMENT_MTU if underlay is not None else None


def peers(networks: Iterable[Network]) -> dict[tuple[str, str], tuple[str, ...]]:
    """(host, network name) -> the underlay addresses its VXLAN port floods to.

    The peers of a segment's network on one host are the underlay addresses of every other host
    that carries the same segment, sorted; networks that get no VXLAN port are left out.
    """
    nets = [n for n in networks if stretchable(n)]
    by_name: dict[str, set[tuple[str, str]]] = {}
    for n in nets:
        assert n.underlay is not None
        by_name.setdefault(n.name, set()).add((n.host, n.underlay))
    return {
        (n.host, n.name): tuple(
            sorted(
                (u for h, u in by_name[n.name] if h != n.host),
                key=lambda a: ipaddress.ip_address(a),
            )
        )
        for n in nets
    }


def cut_segments(networks: Iterable[Network]) -> list[str]:
    """One line per VAN segment whose VMs sit on several hosts that VXLAN cannot join (a host
    without an underlay address): such a segment would be cut in two."""
    hosts: dict[str, list[Network]] = {}
    for n in networks:
        if n.vlan is not None:
            hosts.setdefault(n.name, []).append(n)
    problems = []
    for name, nets in sorted(hosts.items()):
        if len(nets) < 2:
            continue
        missing = sorted(n.host for n in nets if n.underlay is None)
        if missing:
            spread = ", ".join(sorted(n.host for n in nets))
            problems.append(
                f"VAN segment {nets[0].segment or '(root)'} ({name}) spans hosts {spread}, but "
                f"{', '.join(missing)} has no underlay address: register hosts with "
                "`cui host add ... --underlay IP` or place the VAN on one host"
            )
    return problems


@dataclass(frozen=True)
class Underlay:
    """A host's underlay address, checked."""

    address: str


def check_underlay(
    text: str,
    address_base: str,
    taken: Mapping[str, str],
    public_ips: Iterable[str] = (),
) -> Underlay:
    """Check an underlay address for `cui host add --underlay`.

    Args:
        text: what the administrator typed.
        address_base: the /8 the VAN subnets come from (an underlay inside it would collide).
        taken: underlay address -> the host already registered with it.
        public_ips: the public IP pool (addresses handed to guests, not hosts).

    Raises:
        UtilityError: says which rule the address breaks.
    """
    where = "field 'underlay'"
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        raise UtilityError(f"{where}: {text!r} is not an IP address") from None
    if not isinstance(ip, ipaddress.IPv4Address):
        raise UtilityError(f"{where}: {ip} is IPv6; VXLAN ports are made over IPv4 underlays")
    base = ipaddress.IPv4Network(address_base)
    reason = (
        f"inside the VAN address base {base}" if ip in base
        else "loopback" if ip.is_loopback
        else "multicast" if ip.is_multicast
        else "broadcast" if ip == ipaddress.IPv4Address("255.255.255.255")
        else "unspecified" if ip.is_unspecified
        else "link-local" if ip.is_link_local
        else "reserved" if ip.is_reserved
        else "in the public IP pool" if str(ip) in set(public_ips)
        else f"already the underlay of host {taken[str(ip)]}" if str(ip) in taken
        else None
    )  # fmt: skip
    if reason:
        raise UtilityError(f"{where}: {ip} is {reason}, not a host's underlay address")
    return Underlay(str(ip))
