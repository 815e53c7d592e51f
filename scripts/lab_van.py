"""A VAN segment the utility stretches over lab hosts, and Web-appliance VMs on it.

Shared by `tests/integration/test_lab_van.py` and `scripts/benchmarks/bench_vxlan.py`. The
segment's bridges, VXLAN ports and flood lists are made by the utility's own planner and
executor (its network actions, `plan = diff(current, desired)`) against the lab hosts'
`qemu+ssh://` URIs, exactly as a start, stop or update would. The VMs on it boot the way
`tests/integration/test_lab.py` boots them (program disk uploaded into a pool of the host over
libvirt, parameters through `virDomainOpenConsole`), but with the NIC the utility generates
(`type='network'` on the segment's network, MTU 1450), until the utility places disks on remote
hosts itself. Everything runs inside the lab's namespaces and bridges; 10.x addresses exist only
on the segment.
"""

from __future__ import annotations

import base64
import json
import queue
import re
import secrets
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
from multihost_lab import Lab, LabHost

from cvl.maps import encode
from utility.adapters.executor import Executor, Outcome, Timeouts
from utility.adapters.libvirt_host import LibvirtHost
from utility.core import overlay
from utility.core.addresses import subnet_for_vlan
from utility.core.desired_state import Interface, Network, VapState, Vm
from utility.core.domain_xml import InterfaceDevice
from utility.core.planner import Plan, diff

PREFIX = "col"


def network_name(vni: int) -> str:
    return f"{PREFIX}-v{vni}"


def segment_vm(path: str, host: str, vni: int, index: int) -> Vm:
    """A VM of the segment as the planner sees it (its disks are the test's business)."""
    subnet = subnet_for_vlan(vni)
    return Vm(
        path=path,
        type="Web",
        origin=None,
        host=host,
        domain=f"{PREFIX}-lab-{path}",
        memory=96 << 20,
        vcpus=1,
        vm_dir=f"/nonexistent/{path}",
        guest_socket=f"/nonexistent/{path}.sock",
        disks=(),
        interfaces=(
            Interface(
                name="ethernet0",
                mac=f"02:00:00:{vni >> 8:02x}:{vni & 0xFF:02x}:{index:02x}",
                ip=str(subnet.network_address + 10 + index),
                netmask="255.255.255.0",
                network=network_name(vni),
                segment="",
                mtu=overlay.SEGMENT_MTU,
            ),
        ),
        params=(),
        sensitive=(),
        provides=(),
        requires=(),
        needs=(),
    )


def segment_state(lab: Lab, vni: int, placement: Mapping[str, str]) -> VapState:
    """The state of a one-segment VAP whose VMs sit where `placement` says (path -> host)."""
    underlay = {h.name: h.ip for h in lab.hosts}
    vms = tuple(
        segment_vm(path, host, vni, i) for i, (path, host) in enumerate(sorted(placement.items()))
    )
    name = network_name(vni)
    nets = tuple(
        Network(name, name, host, "", vni, underlay[host])
        for host in sorted({vm.host for vm in vms})
    )
    return VapState("/lab.cvl", "LabVan", {"": vni}, vms, nets)


class UtilityNetworks:
    """The utility's network actions against the lab hosts (its own `LibvirtHost`s)."""

    def __init__(self, lab: Lab) -> None:
        self.hosts = {h.name: LibvirtHost(h.name, h.uri) for h in lab.hosts}
        self.executor = Executor(self.hosts.__getitem__, 1, Timeouts(), Path("/nonexistent"))

    def apply(self, current: VapState | None, desired: VapState | None) -> tuple[Plan, Outcome]:
        """Run the network actions of `diff(current, desired)`; the VMs are the caller's."""
        full = diff(current, desired)
        plan = Plan(actions=tuple(a for a in full.actions if a.network is not None))
        return plan, self.executor.run(plan)

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()


# --- looking inside a lab host ------------------------------------------------------------


def ip_json(host: LabHost, *args: str) -> list[dict]:  # type: ignore[type-arg]
    proc = subprocess.run(
        ["ip", "-n", host.netns, "-d", "-j", *args], capture_output=True, text=True, timeout=30
    )
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else []


@dataclass(frozen=True)
class HostView:
    """What a lab host holds of a segment: its bridge, its VXLAN port and the flood list."""

    bridge_mtu: int | None
    port: dict[str, object] | None
    flood: frozenset[str]
    vxlan_links: tuple[str, ...]


def host_view(host: LabHost, vni: int) -> HostView:
    bridge = network_name(vni)
    port = overlay.port_name(bridge)
    links = ip_json(host, "link", "show")
    by_name = {link["ifname"]: link for link in links}
    vxlans = tuple(
        sorted(
            link["ifname"] for link in links if link.get("linkinfo", {}).get("info_kind") == "vxlan"
        )
    )
    flood: set[str] = set()
    if port in by_name:
        proc = subprocess.run(
            ["bridge", "-n", host.netns, "-j", "fdb", "show", "dev", port],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        entries = json.loads(proc.stdout or "[]")
        flood = {e["dst"] for e in entries if e.get("mac") == "00:00:00:00:00:00" and "dst" in e}
    info = by_name.get(port)
    return HostView(
        bridge_mtu=by_name[bridge]["mtu"] if bridge in by_name else None,
        port=(
            {
                "vni": info["linkinfo"]["info_data"]["id"],
                "local": info["linkinfo"]["info_data"].get("local"),
                "dstport": info["linkinfo"]["info_data"].get("port"),
                "mtu": info["mtu"],
                "master": info.get("master"),
                "up": "UP" in info["flags"],
            }
            if info
            else None
        ),
        flood=frozenset(flood),
        vxlan_links=vxlans,
    )


def all_fdb_entries_of(host: LabHost, port: str) -> list[dict]:  # type: ignore[type-arg]
    """Every FDB entry a host holds for `port` (empty when the port is gone)."""
    proc = subprocess.run(
        ["bridge", "-n", host.netns, "-j", "fdb", "show"], capture_output=True, text=True
    )
    return [e for e in json.loads(proc.stdout or "[]") if e.get("ifname") == port]


# --- VMs on the segment --------------------------------------------------------------------


def volume_xml(name: str, size: int, fmt: str = "qcow2", backing: str | None = None) -> str:
    back = (
        f"<backingStore><path>{backing}</path><format type='qcow2'/></backingStore>"
        if backing
        else ""
    )
    return (
        f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
        f"<target><format type='{fmt}'/></target>{back}</volume>"
    )


class Channel:
    """The guest channel (serial 1, a pty) through `virDomainOpenConsole` over qemu+ssh."""

    def __init__(self, conn: libvirt.virConnect, domain: libvirt.virDomain) -> None:
        self.stream = conn.newStream(0)
        domain.openConsole("serial1", self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        try:
            while chunk := self.stream.recv(4096):
                buffer += chunk
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    self.lines.put(line.decode("ascii", "replace").rstrip("\r"))
        except libvirt.libvirtError:
            pass

    def deliver(self, params: Mapping[str, str], timeout: float) -> str:
        """Wait for HELLO, send PARAMS, return the READY or FAILED line."""
        deadline = time.monotonic() + timeout

        def line() -> str:
            try:
                return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("the guest channel said nothing in time") from None

        while not line().startswith("COLLECTIVE HELLO"):
            pass
        payload = base64.b64encode(encode(sorted(params.items())).encode()).decode()
        data = f"COLLECTIVE PARAMS {payload}\n".encode()
        while data:
            data = data[self.stream.send(data) :]
        while True:
            got = line()
            if got.startswith(("COLLECTIVE READY", "COLLECTIVE FAILED")):
                return got


@dataclass
class SegmentVM:
    """A Web appliance VM on a lab host, its NIC on the segment's libvirt network."""

    host: LabHost
    vm: Vm
    conn: libvirt.virConnect
    pool: libvirt.virStoragePool
    domain: libvirt.virDomain | None = None
    volumes: list[str] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return self.vm.interfaces[0].ip

    def console(self) -> str:
        path = Path(self.host.directory, "log", "qemu", f"{self.vm.domain}.console")
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        if self.domain is not None:
            try:
                self.domain.destroy()
            except libvirt.libvirtError:
                pass
            self.domain = None
        for name in self.volumes:
            try:
                self.pool.storageVolLookupByName(name).delete()
            except libvirt.libvirtError:
                pass
        self.volumes = []


def open_pool(host: LabHost) -> tuple[libvirt.virConnect, libvirt.virStoragePool]:
    conn = libvirt.open(host.uri)
    name = f"clab-van-{secrets.token_hex(3)}"
    xml = (
        f"<pool type='dir'><name>{name}</name>"
        f"<target><path>/var/lib/libvirt/images/{name}</path></target></pool>"
    )
    return conn, conn.storagePoolCreateXML(xml, libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)


def close_pool(conn: libvirt.virConnect, pool: libvirt.virStoragePool) -> None:
    for vol in pool.listAllVolumes():
        vol.delete()
    pool.destroy()
    conn.close()


def upload_base(conn: libvirt.virConnect, pool: libvirt.virStoragePool, image: Path) -> str:
    """The Web program disk as a volume of the host's pool (uploaded once per pool)."""
    (disk,) = image.glob("*.qcow2")
    data = disk.read_bytes()
    vol = pool.createXML(volume_xml("web-base.qcow2", len(data)), 0)
    stream = conn.newStream(0)
    vol.upload(stream, 0, len(data), 0)
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        offset += stream.send(bytes(view[offset : offset + (1 << 20)]))
    stream.finish()
    return str(vol.path())


def domain_xml_for(image: Path, vm: Vm, pool: str, volume: str) -> str:
    """The published Web domain XML with the program disk a pool volume, the utility's NIC,
    the console to a file and the guest channel on a pty."""
    (xml_file,) = image.glob("*.xml")
    root = ET.fromstring(xml_file.read_text())
    root.find("name").text = vm.domain  # type: ignore[union-attr]
    devices = root.find("devices")
    assert devices is not None
    for old in (
        devices.findall("interface") + devices.findall("serial") + devices.findall("console")
    ):
        devices.remove(old)
    disk, *extra = devices.findall("disk")
    for other in extra:
        devices.remove(other)
    disk.set("type", "volume")
    disk.remove(disk.find("source"))  # type: ignore[arg-type]
    ET.SubElement(disk, "source", pool=pool, volume=volume)
    iface = vm.interfaces[0]
    devices.append(InterfaceDevice(mac=iface.mac, network=iface.network, mtu=iface.mtu).element())
    console = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(console, "source", path=f"/var/log/libvirt/qemu/{vm.domain}.console")
    ET.SubElement(console, "target", port="0")
    channel = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(channel, "target", port="1")
    return ET.tostring(root, encoding="unicode")


def boot(
    host: LabHost,
    conn: libvirt.virConnect,
    pool: libvirt.virStoragePool,
    base: str,
    image: Path,
    vm: Vm,
    timeout: float = 180.0,
) -> SegmentVM:
    """An overlay made by the host's libvirtd, the domain started, parameters delivered."""
    overlay_name = f"{vm.domain}.qcow2"
    pool.createXML(volume_xml(overlay_name, 1 << 30, backing=base), 0)
    placed = SegmentVM(host, vm, conn, pool, volumes=[overlay_name])
    placed.domain = conn.createXML(domain_xml_for(image, vm, pool.name(), overlay_name), 0)
    iface = vm.interfaces[0]
    answer = Channel(conn, placed.domain).deliver(
        {
            "domain": f"{vm.path}.lab.test",
            "title": f"served from {host.name}",
            "ethernet0.ip": iface.ip,
            "ethernet0.netmask": iface.netmask,
            "ethernet0.mac": iface.mac,
        },
        timeout,
    )
    if answer != "COLLECTIVE READY":
        raise RuntimeError(f"{vm.path} on {host.name}: {answer}\n{placed.console()[-2000:]}")
    return placed


# --- a probe on the segment and ping ------------------------------------------------------


class Probe:
    """A network namespace with one veth on the segment's bridge of a lab host."""

    def __init__(self, host: LabHost, vni: int, address: str) -> None:
        self.name = f"cvan-{secrets.token_hex(3)}"
        outer = f"cvp{secrets.token_hex(3)}"
        mtu = str(overlay.SEGMENT_MTU)
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "-n", host.netns, "link", "add", outer, "mtu", mtu, "type", "veth",
             "peer", "name", "eth0", "netns", self.name],
            ["ip", "-n", host.netns, "link", "set", outer, "master", network_name(vni), "up"],
            ["ip", "-n", self.name, "link", "set", "eth0", "mtu", mtu, "up"],
            ["ip", "-n", self.name, "addr", "add", f"{address}/24", "dev", "eth0"],
        ]  # fmt: skip
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=30)

    def ping(self, address: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, "ping", "-n", "-W", "2", *extra, address],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args], capture_output=True, text=True, timeout=60
        )

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


def rtt_ms(output: str) -> list[float]:
    """Each reply's round-trip time from `ping` output (without -q)."""
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", output)]
