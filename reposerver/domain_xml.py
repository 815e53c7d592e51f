"""Reading the disks out of a libvirt domain XML (the file a VM appliance's `vm` names)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from reposerver.errors import InvalidAppliance


@dataclass(frozen=True)
class DiskRef:
    """A file-backed disk of the domain: its guest device (`vda`) and source path as written."""

    target: str
    source: str


def disks(xml: bytes, where: str) -> list[DiskRef]:
    """Every `<disk type='file' device='disk'>` of the domain, in document order.

    Raises:
        InvalidAppliance: the XML does not parse, is not a domain, or a disk lacks source/target.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        line, col = exc.position
        raise InvalidAppliance(f"{where}:{line}:{col}: domain XML does not parse: {exc}") from None
    if root.tag != "domain":
        raise InvalidAppliance(f"{where}: root element is <{root.tag}>, expected <domain>")
    result = []
    for disk in root.findall("./devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        target = disk.find("target")
        source = disk.find("source")
        if target is None or not target.get("dev"):
            raise InvalidAppliance(f"{where}: a <disk> has no <target dev=...>")
        if disk.get("type", "file") != "file" or source is None or not source.get("file"):
            raise InvalidAppliance(
                f"{where}: disk {target.get('dev')} must be type='file' with <source file=...>"
            )
        result.append(DiskRef(target.get("dev", ""), source.get("file", "")))
    return result


def program_disks(xml: bytes, data_devices: frozenset[str], where: str) -> list[DiskRef]:
    """The disks not listed as data disks: the ones a repository stores."""
    return [d for d in disks(xml, where) if d.target not in data_devices]
