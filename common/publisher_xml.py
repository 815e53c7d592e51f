"""The one reader of a publisher's domain XML (the file a VM appliance's `vm` names).

The repository server reads it at publish time (which disk files a version must hold) and the
utility at start (memory, vCPUs, direct-boot kernel/initrd/cmdline, machine, ACPI and the program
disks); both read the disks with `disks`, so they agree on what a disk is: a `<disk>` whose
`device` is `disk` (the default). Other devices (`cdrom`, `floppy`, `lun`) are skipped on both
sides: the repository does not store their files and the utility does not attach them. The XML
is input, not a template: the utility builds its own domain XML (`utility.core.domain_xml`).
Errors are `PublisherXmlError`; each side turns it into its own error type.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

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


class PublisherXmlError(ValueError):
    """The publisher's domain XML is unusable; the message names the file and the element."""


@dataclass(frozen=True)
class ProgramDisk:
    """A file-backed disk of the domain: its guest device (`vda`) and source path as written."""

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
        PublisherXmlError: not XML, not a <domain>, or no usable <memory>.
    """
    root = _domain(data, where)
    memory_el = root.find("memory")
    if memory_el is None or not (memory_el.text or "").strip().isdigit():
        raise PublisherXmlError(f"{where}: <memory> is missing or not a number")
    unit = memory_el.get("unit", "KiB").lower()
    if unit not in _UNIT:
        raise PublisherXmlError(f"{where}: <memory unit={unit!r}> is not a known unit")
    memory = int(memory_el.text or "0") * _UNIT[unit]
    vcpu_text = (root.findtext("vcpu") or "1").strip()
    if not vcpu_text.isdigit() or int(vcpu_text) < 1:
        raise PublisherXmlError(f"{where}: <vcpu> must be a positive number, got {vcpu_text!r}")
    return VmSpec(
        memory=memory,
        vcpus=int(vcpu_text),
        kernel=(root.findtext("os/kernel") or "").strip(),
        initrd=(root.findtext("os/initrd") or "").strip(),
        cmdline=(root.findtext("os/cmdline") or "").strip(),
        disks=tuple(_disks(root, where)),
        machine=_machine(root),
        acpi=root.find("features/acpi") is not None,
    )


def disks(data: bytes, where: str) -> list[ProgramDisk]:
    """Every file-backed `<disk device='disk'>` of the domain, in document order.

    Raises:
        PublisherXmlError: not XML, not a <domain>, or a disk lacks its file source or target.
    """
    return _disks(_domain(data, where), where)


def _domain(data: bytes, where: str) -> ET.Element:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise PublisherXmlError(f"{where}: not valid domain XML: {exc}") from None
    if root.tag != "domain":
        raise PublisherXmlError(f"{where}: root element is <{root.tag}>, expected <domain>")
    return root


def _disks(root: ET.Element, where: str) -> list[ProgramDisk]:
    found = []
    for disk in root.findall("devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue  # a cdrom, floppy or lun: neither stored nor attached
        source, target = disk.find("source"), disk.find("target")
        if target is None or not target.get("dev"):
            raise PublisherXmlError(f"{where}: a <disk> needs <target dev=...>")
        if disk.get("type", "file") != "file" or source is None or not source.get("file"):
            raise PublisherXmlError(
                f"{where}: disk {target.get('dev')} must be type='file' with <source file=...>"
            )
        found.append(ProgramDisk(target=target.get("dev", ""), source=source.get("file", "")))
    return found


def _machine(root: ET.Element) -> str:
    """The machine type the publisher asked for (`<os><type machine=...>`), or ""."""
    os_type = root.find("os/type")
    return os_type.get("machine", "") if os_type is not None else ""
