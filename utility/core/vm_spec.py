"""What the utility reads from a publisher's domain XML (the file a VM appliance's `vm` names).

The publisher's XML is input, not a template: the utility takes memory, vCPUs, the direct-boot
kernel/initrd/cmdline, and the program disks (target device and file name), and builds its own
domain XML from declarative classes (`domain_xml`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from utility.errors import ApplianceError

_UNIT = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 10**6,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 10**9,
}


@dataclass(frozen=True)
class ProgramDisk:
    """A disk of the appliance image: where it attaches and which appliance file holds it."""

    target: str
    source: str


@dataclass(frozen=True)
class VmSpec:
    """The parts of a publisher's domain XML the utility uses."""

    memory: int
    vcpus: int
    kernel: str
    initrd: str
    cmdline: str
    disks: tuple[ProgramDisk, ...]
    machine: str = ""
    acpi: bool = False


def parse_vm_spec(data: bytes, where: str) -> VmSpec:
    """Parse a publisher's domain XML.

    Args:
        data: the file's bytes.
        where: names the file in errors (e.g. "DNS v3: dns.vmx").

    Raises:
        ApplianceError: not XML, not a <domain>, or no usable <memory>.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ApplianceError(f"{where}: not valid domain XML: {exc}") from None
    if root.tag != "domain":
        raise ApplianceError(f"{where}: root element is <{root.tag}>, expected <domain>")
    memory_el = root.find("memory")
    if memory_el is None or not (memory_el.text or "").strip().isdigit():
        raise ApplianceError(f"{where}: <memory> is missing or not a number")
    unit = memory_el.get("unit", "KiB").lower()
    if unit not in _UNIT:
        raise ApplianceError(f"{where}: <memory unit={unit!r}> is not a known unit")
    memory = int(memory_el.text or "0") * _UNIT[unit]
    vcpu_text = (root.findtext("vcpu") or "1").strip()
    if not vcpu_text.isdigit() or int(vcpu_text) < 1:
        raise ApplianceError(f"{where}: <vcpu> must be a positive number, got {vcpu_text!r}")
    disks = []
    for disk in root.findall("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        if source is None or target is None or not source.get("file") or not target.get("dev"):
            raise ApplianceError(f"{where}: a <disk> needs <source file=...> and <target dev=...>")
        disks.append(ProgramDisk(target=target.get("dev", ""), source=source.get("file", "")))
    return VmSpec(
        memory=memory,
        vcpus=int(vcpu_text),
        kernel=(root.findtext("os/kernel") or "").strip(),
        initrd=(root.findtext("os/initrd") or "").strip(),
        cmdline=(root.findtext("os/cmdline") or "").strip(),
        disks=tuple(disks),
        machine=_machine(root),
        acpi=root.find("features/acpi") is not None,
    )


def _machine(root: ET.Element) -> str:
    """The machine type the publisher asked for (`<os><type machine=...>`), or ""."""
    os_type = root.find("os/type")
    return os_type.get("machine", "") if os_type is not None else ""
