"""Declarative libvirt network XML: an isolated bridge per VAN segment.

No `<forward>` element, so libvirt gives the bridge no uplink and no NAT: VAN traffic stays on
the project's own bridge. No `<ip>` either: the host takes no address on a VAN, so it does not
route or serve DHCP; appliances get their addresses as parameters. A VLAN tag is emitted only
for hosts whose network driver supports it (Open vSwitch), see `LibvirtHost.supports_vlan`.
An `<mtu>` is emitted for segments that may be stretched over VXLAN (`utility.core.overlay`):
libvirt gives it to the bridge and to every tap on it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from utility.core.xml_nodes import el, render
from utility.errors import UtilityError

BRIDGE_NAME_MAX = 15


@dataclass(frozen=True)
class NetworkXml:
    """An isolated network: name, bridge, optional VLAN tag and MTU."""

    name: str
    bridge: str
    vlan: int | None = None
    mtu: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.bridge) <= BRIDGE_NAME_MAX:
            raise UtilityError(
                f"bridge name {self.bridge!r} must be 1-{BRIDGE_NAME_MAX} characters"
            )
        if self.mtu is not None and not 576 <= self.mtu <= 9000:
            raise UtilityError(f"network {self.name}: MTU {self.mtu} is outside 576-9000")

    def element(self) -> ET.Element:
        return el(
            "network",
            {},
            [
                el("name", text=self.name),
                el("bridge", {"name": self.bridge, "stp": "off", "delay": "0"}),
                el("mtu", {"size": self.mtu}) if self.mtu is not None else None,
                el("vlan", {}, [el("tag", {"id": self.vlan})]) if self.vlan is not None else None,
            ],
        )

    def to_xml(self) -> str:
        """The network XML text."""
        return render(self.element())
