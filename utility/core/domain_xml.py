"""Declarative libvirt domain XML: one small class per device, composed by `DomainXml`.

Defaults live in the classes; `from_vm` maps a desired `Vm` onto them. The guest channel is
serial port 1 backed by a Unix socket the utility binds to (`<source mode='bind'>` is libvirt
binding it; the host side connects). Port 0 logs the console to `console.log` in the VM's
directory. On a remote host (`Placement.remote`) neither path exists: the channel is a pty the
utility reaches through a libvirt stream, the console goes to libvirt's log directory there,
and the disks are the host paths of volumes in the utility's pool. Metadata records the
owning VAP so reconciliation can tell our domains from others.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from utility.core.desired_state import Vm
from utility.core.xml_nodes import el, render

METADATA_NS = "urn:collective:utility:1"
ET.register_namespace("collective", METADATA_NS)


def bus_for(target: str) -> str:
    """The disk bus implied by a target name: vd* virtio, sd* sata, hd* ide."""
    return {"vd": "virtio", "sd": "sata", "hd": "ide"}.get(target[:2], "virtio")


@dataclass(frozen=True)
class DiskDevice:
    """A qcow2 file disk."""

    path: str
    target: str
    driver: str = "qcow2"

    def element(self) -> ET.Element:
        return el(
            "disk",
            {"type": "file", "device": "disk"},
            [
                el("driver", {"name": "qemu", "type": self.driver}),
                el("source", {"file": self.path}),
                el("target", {"dev": self.target, "bus": bus_for(self.target)}),
            ],
        )


@dataclass(frozen=True)
class InterfaceDevice:
    """A NIC on a libvirt network."""

    mac: str
    network: str
    model: str = "virtio"
    mtu: int | None = None  # set on VXLAN segments: the tap and the virtio NIC (host_mtu)

    def element(self) -> ET.Element:
        return el(
            "interface",
            {"type": "network"},
            [
                el("mac", {"address": self.mac}),
                el("source", {"network": self.network}),
                el("model", {"type": self.model}),
                el("mtu", {"size": self.mtu}) if self.mtu is not None else None,
            ],
        )


@dataclass(frozen=True)
class UnixSerial:
    """A serial port backed by a Unix socket that libvirt binds (the guest channel)."""

    path: str
    port: int = 1

    def element(self) -> ET.Element:
        return el(
            "serial",
            {"type": "unix"},
            [
                el("source", {"mode": "bind", "path": self.path}),
                el("target", {"port": self.port}),
            ],
        )


@dataclass(frozen=True)
class PtySerial:
    """A serial port on a host pty (the guest channel on a remote host, reached via libvirt)."""

    port: int = 1

    def element(self) -> ET.Element:
        return el("serial", {"type": "pty"}, [el("target", {"port": self.port})])


@dataclass(frozen=True)
class FileSerial:
    """A serial port written to a file (the console log)."""

    path: str
    port: int = 0

    def element(self) -> ET.Element:
        return el(
            "serial",
            {"type": "file"},
            [
                el("source", {"path": self.path}),
                el("target", {"port": self.port}),
            ],
        )


@dataclass(frozen=True)
class DirectBoot:
    """`<os>`: hvm, with an optional kernel/initrd/cmdline for direct boot."""

    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    arch: str = "x86_64"
    machine: str | None = None

    def element(self) -> ET.Element:
        return el(
            "os",
            {},
            [
                el("type", {"arch": self.arch, "machine": self.machine}, text="hvm"),
                el("kernel", text=self.kernel) if self.kernel else None,
                el("initrd", text=self.initrd) if self.initrd else None,
                el("cmdline", text=self.cmdline) if self.cmdline else None,
                None if self.kernel else el("boot", {"dev": "hd"}),
            ],
        )


@dataclass(frozen=True)
class OwnerMetadata:
    """Who owns the domain: VAP id and component path, in our namespace."""

    vap_id: int
    path: str

    def element(self) -> ET.Element:
        return el(
            "metadata",
            {},
            [
                el(f"{{{METADATA_NS}}}owner", {"vap": self.vap_id, "path": self.path}),
            ],
        )


@dataclass(frozen=True)
class DomainXml:
    """A whole domain: identity, resources, boot, devices, ownership."""

    name: str
    memory_kib: int
    vcpus: int
    domain_type: str
    boot: DirectBoot
    owner: OwnerMetadata
    disks: tuple[DiskDevice, ...] = ()
    interfaces: tuple[InterfaceDevice, ...] = ()
    serials: tuple[UnixSerial | PtySerial | FileSerial, ...] = field(default_factory=tuple)
    acpi: bool = False

    def element(self) -> ET.Element:
        devices = [d.element() for d in self.disks]
        devices += [i.element() for i in self.interfaces]
        devices += [s.element() for s in self.serials]
        return el(
            "domain",
            {"type": self.domain_type},
            [
                el("name", text=self.name),
                self.owner.element(),
                el("memory", {"unit": "KiB"}, text=self.memory_kib),
                el("vcpu", text=self.vcpus),
                self.boot.element(),
                el("features", {}, [el("acpi")]) if self.acpi else None,
                el("on_poweroff", text="destroy"),
                el("on_reboot", text="restart"),
                el("on_crash", text="destroy"),
                el("devices", {}, devices),
            ],
        )

    def to_xml(self) -> str:
        """The domain XML text."""
        return render(self.element())


REMOTE_CONSOLE_DIR = "/var/log/libvirt/qemu"
"""Where a remote host's console log goes (libvirt's own log directory there)."""


@dataclass(frozen=True)
class Placement:
    """Where a VM's files are on its host: `disks` maps a disk target to the host path of its
    volume (targets not named keep the desired path); `remote` says the host's files are out
    of the utility's reach (guest channel over a pty, console in libvirt's log directory)."""

    disks: Mapping[str, str] = field(default_factory=dict)
    remote: bool = False
    pty_channel: bool = False
    """The guest channel on a pty even on a local host (`COLLECTIVE_GUEST_CHANNEL=stream`)."""


def from_vm(vm: Vm, vap_id: int, domain_type: str, placement: Placement | None = None) -> DomainXml:
    """The domain XML of a desired VM on a host whose domain type is `domain_type`."""
    where = placement or Placement()
    console = (
        f"{REMOTE_CONSOLE_DIR}/{vm.domain}.console"
        if where.remote
        else str(Path(vm.vm_dir) / "console.log")
    )
    serials: tuple[UnixSerial | PtySerial | FileSerial, ...] = (
        FileSerial(path=console),
        PtySerial() if where.remote or where.pty_channel else UnixSerial(path=vm.guest_socket),
    )
    return DomainXml(
        name=vm.domain,
        memory_kib=max(vm.memory // 1024, 1),
        vcpus=vm.vcpus,
        domain_type=domain_type,
        boot=DirectBoot(
            kernel=vm.os.get("kernel", ""),
            initrd=vm.os.get("initrd", ""),
            cmdline=vm.os.get("cmdline", ""),
            machine=vm.os.get("machine") or None,
        ),
        acpi=vm.os.get("acpi") == "on",
        owner=OwnerMetadata(vap_id=vap_id, path=vm.path),
        disks=tuple(
            DiskDevice(path=where.disks.get(d.target, d.path), target=d.target) for d in vm.disks
        ),
        interfaces=tuple(
            InterfaceDevice(mac=i.mac, network=i.network, mtu=i.mtu) for i in vm.interfaces
        ),
        serials=serials,
    )


def owner_of(xml_text: str) -> tuple[int, str] | None:
    """(VAP id, component path) from a domain's XML metadata, or None if not ours."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return None
    owner = root.find(f"metadata/{{{METADATA_NS}}}owner")
    if owner is None or not (owner.get("vap") or "").isdigit():
        return None
    return int(owner.get("vap", "0")), owner.get("path", "")
