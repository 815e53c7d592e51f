"""The multi-host lab: separate libvirtds over qemu+ssh, pools and streams, VXLAN, a real VM.

Every host is reached as `qemu+ssh://root@198.18.13.1N/system` with the lab's key, exactly as
the utility will reach a real remote host. All traffic stays on the lab's underlay bridge and
on bridges and namespaces these tests make inside it; the 10.x endpoint addresses exist only
inside the VXLAN-joined bridges. Measurements go to `artifacts/lab-measurements.json`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import random
import re
import secrets
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab_fixture import (  # the fixtures are used by name
    Lab,
    LabHost,
    in_host,
    in_netns,
    is_running,
    lab_cli,
    lab_fixture,  # noqa: F401
    lab_lock,
    lab_session_fixture,  # noqa: F401
    leftovers,
)

from cvl.maps import encode

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.lab, pytest.mark.vm, pytest.mark.xdist_group("lab")]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
MEASUREMENTS = ARTIFACTS / "lab-measurements.json"
VXLAN_MTU = 1450  # endpoints' MTU: a 1500-byte underlay minus 50 bytes of VXLAN encapsulation
BOOT_TIMEOUT = 180.0
POOL_BUILD = 1  # libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD: make the pool's directory


def record(key: str, value: object) -> None:
    """Keep one measurement in artifacts/lab-measurements.json (merged across tests)."""
    ARTIFACTS.mkdir(exist_ok=True)
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data[key] = value
    MEASUREMENTS.write_text(json.dumps(data, indent=2) + "\n")


def open_remote(host: LabHost) -> libvirt.virConnect:
    return libvirt.open(host.uri)


# --- 1. separate libvirtds, reachable only over ssh with the lab key -------------------------


def test_each_host_answers_over_ssh_with_its_own_libvirtd(lab: Lab) -> None:
    system_pid = int(Path("/run/libvirtd.pid").read_text().split()[0])
    root_net = os.readlink("/proc/self/ns/net")
    seen_mount_ns = set()
    for host in lab.hosts:
        proc = subprocess.run(
            ["virsh", "-c", host.uri, "hostname"], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == host.name
        pid = host.pids["libvirtd"]
        assert pid != system_pid
        assert os.readlink(f"/proc/{pid}/ns/net") != root_net
        seen_mount_ns.add(os.readlink(f"/proc/{pid}/ns/mnt"))
        # sshd runs in the same mount namespace as that libvirtd (so it reaches its socket).
        assert os.readlink(f"/proc/{host.pids['sshd']}/ns/mnt") == os.readlink(
            f"/proc/{pid}/ns/mnt"
        )
    assert len(seen_mount_ns) == len(lab.hosts)
    assert os.readlink("/proc/self/ns/mnt") not in seen_mount_ns


def test_a_network_made_on_one_host_exists_only_there(lab: Lab) -> None:
    first, *others = lab.hosts
    name = f"clab-net-{secrets.token_hex(3)}"
    bridge = f"clbr{secrets.token_hex(3)}"
    xml = (
        f"<network><name>{name}</name><bridge name='{bridge}' stp='off'/><dns enable='no'/>"
        "<ip address='10.214.1.1' netmask='255.255.255.0'/></network>"
    )
    conn = open_remote(first)
    net = conn.networkCreateXML(xml)
    try:
        assert name in conn.listNetworks()
        assert in_host(first, ["ip", "link", "show", bridge]).returncode == 0
        for other in others:
            other_conn = open_remote(other)
            assert name not in other_conn.listNetworks()
            other_conn.close()
            assert in_host(other, ["ip", "link", "show", bridge]).returncode != 0
        system = libvirt.open("qemu:///system")
        assert name not in system.listNetworks()
        system.close()
        assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode
    finally:
        net.destroy()
        conn.close()


def test_ssh_refuses_passwords_and_unknown_keys(lab: Lab, tmp_path: Path) -> None:
    host = lab.hosts[0]
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    base = [
        "ssh",
        "-F",
        "none",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={lab.known_hosts}",
    ]
    by_key = subprocess.run(
        [*base, "-o", "IdentitiesOnly=yes", "-i", str(stranger), f"root@{host.ip}", "true"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert by_key.returncode == 255
    assert "Permission denied (publickey)" in by_key.stderr  # the only method offered
    # A host key that is not the one the lab wrote is refused before any authentication.
    forged = tmp_path / "known_hosts"
    other_key = Path(lab.hosts[1].directory, "run/lab/host_key.pub").read_text()
    forged.write_text(f"{host.ip} {other_key}")
    wrong_host = subprocess.run(
        ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={forged}", "-i", lab.keyfile, f"root@{host.ip}", "true"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert wrong_host.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in wrong_host.stderr


# --- 2. a storage pool and stream upload/download over qemu+ssh ------------------------------


@pytest.fixture
def remote_pool(lab: Lab) -> Iterator[tuple[LabHost, libvirt.virConnect, libvirt.virStoragePool]]:
    host = lab.hosts[0]
    conn = open_remote(host)
    name = f"clab-pool-{secrets.token_hex(3)}"
    xml = (
        f"<pool type='dir'><name>{name}</name>"
        f"<target><path>/var/lib/libvirt/images/{name}</path></target></pool>"
    )
    pool = conn.storagePoolCreateXML(xml, libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)
    try:
        yield host, conn, pool
    finally:
        for vol in pool.listAllVolumes():
            vol.delete()
        pool.destroy()
        in_host(host, ["rmdir", f"/var/lib/libvirt/images/{name}"])
        conn.close()


def upload(conn: libvirt.virConnect, vol: libvirt.virStorageVol, data: bytes) -> float:
    """Send `data` into `vol` through a libvirt stream; seconds taken."""
    started = time.monotonic()
    stream = conn.newStream(0)
    vol.upload(stream, 0, len(data), 0)
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        offset += stream.send(bytes(view[offset : offset + (1 << 20)]))
    stream.finish()
    return time.monotonic() - started


def download(
    conn: libvirt.virConnect, vol: libvirt.virStorageVol, size: int
) -> tuple[bytes, float]:
    started = time.monotonic()
    stream = conn.newStream(0)
    vol.download(stream, 0, size, 0)
    parts: list[bytes] = []
    while True:
        chunk = stream.recv(1 << 20)
        if not chunk:
            break
        parts.append(chunk)
    stream.finish()
    return b"".join(parts), time.monotonic() - started


def volume_xml(name: str, size: int) -> str:
    return (
        f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
        "<target><format type='raw'/></target></volume>"
    )


def test_pool_volume_upload_and_download_round_trip_over_ssh(remote_pool, lab: Lab) -> None:
    host, conn, pool = remote_pool
    data = os.urandom(32 << 20)
    vol = pool.createXML(volume_xml("blob.raw", len(data)), 0)
    up_seconds = upload(conn, vol, data)
    back, down_seconds = download(conn, vol, len(data))
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
    # The bytes live in that host's private /var/lib/libvirt, not the machine's.
    inside = Path(vol.path())
    on_disk = Path(host.directory, "lib", inside.relative_to("/var/lib/libvirt"))
    assert hashlib.sha256(on_disk.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not inside.exists()
    other = open_remote(lab.hosts[1])
    assert pool.name() not in other.listStoragePools()
    other.close()
    mib = len(data) / (1 << 20)
    record("upload_MiB_per_s", round(mib / up_seconds, 1))
    record("download_MiB_per_s", round(mib / down_seconds, 1))


# --- 3. VXLAN across hosts ---------------------------------------------------------------------


class Segment:
    """One VAN segment stretched over lab hosts: a bridge + VXLAN port per host, head-end
    replication to the others, and endpoint namespaces (stand-ins for VMs) on the bridges."""

    def __init__(self, hosts: list[LabHost], vni: int) -> None:
        self.hosts = hosts
        self.vni = vni
        self.bridge = f"vbr{vni}"
        self.port = f"vx{vni}"
        self.endpoints: list[str] = []

    def make(self) -> None:
        for host in self.hosts:
            ip = ["ip", "-n", host.netns]
            run([*ip, "link", "add", self.bridge, "type", "bridge", "stp_state", "0"])
            run([*ip, "link", "add", self.port, "type", "vxlan", "id", str(self.vni),
                 "dstport", "4789", "local", host.ip, "nolearning"])  # fmt: skip
            run([*ip, "link", "set", self.port, "master", self.bridge, "up"])
            run([*ip, "link", "set", self.bridge, "up"])
            for other in self.hosts:
                if other is not host:
                    run(["bridge", "-n", host.netns, "fdb", "append", "00:00:00:00:00:00",
                         "dev", self.port, "dst", other.ip])  # fmt: skip

    def endpoint(self, host: LabHost, address: str) -> str:
        """A network namespace with one veth on this segment's bridge on `host`."""
        name = f"cvx{self.vni}-{len(self.endpoints)}"
        outer = f"cvx{self.vni}e{len(self.endpoints)}"
        run(["ip", "netns", "add", name])
        self.endpoints.append(name)
        run(["ip", "-n", host.netns, "link", "add", outer, "type", "veth",
             "peer", "name", "eth0", "netns", name])  # fmt: skip
        run(["ip", "-n", host.netns, "link", "set", outer, "master", self.bridge, "up"])
        run(["ip", "-n", name, "link", "set", "eth0", "mtu", str(VXLAN_MTU), "up"])
        run(["ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0"])
        return name

    def remove(self) -> None:
        for name in self.endpoints:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        for host in self.hosts:
            for link in (self.port, self.bridge):
                subprocess.run(["ip", "-n", host.netns, "link", "del", link], capture_output=True)


def run(args: list[str]) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc.stdout


def ping(netns: str, address: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return in_netns(netns, ["ping", "-n", "-q", "-W", "2", *extra, address])


def avg_rtt_ms(output: str) -> float:
    match = re.search(r"= [\d.]+/([\d.]+)/", output)
    assert match, output
    return float(match.group(1))


def port_counters(host: LabHost, port: str) -> tuple[int, int]:
    stats = json.loads(run(["ip", "-n", host.netns, "-s", "-j", "link", "show", port]))[0]
    return stats["stats64"]["tx"]["packets"], stats["stats64"]["rx"]["packets"]


@pytest.fixture
def segment(lab: Lab) -> Iterator[Segment]:
    made = Segment(lab.hosts[:2], vni=random.randrange(1000, 9000))
    try:
        made.make()
        yield made
    finally:
        made.remove()


def test_vxlan_segment_carries_pings_across_hosts_and_nowhere_else(
    segment: Segment, lab: Lab
) -> None:
    one, two = segment.hosts
    prefix = f"10.213.{random.randrange(1, 255)}"
    assert f"{prefix}." not in run(["ip", "-4", "route"])  # the machine has no route there
    a = segment.endpoint(one, f"{prefix}.1")
    b = segment.endpoint(two, f"{prefix}.2")
    c = segment.endpoint(one, f"{prefix}.3")
    tx_before, _ = port_counters(one, segment.port)
    _, rx_before = port_counters(two, segment.port)

    cross = ping(a, f"{prefix}.2", "-c", "20", "-i", "0.05")
    assert cross.returncode == 0, cross.stdout + cross.stderr
    same = ping(a, f"{prefix}.3", "-c", "20", "-i", "0.05")
    assert same.returncode == 0, same.stdout + same.stderr
    assert port_counters(one, segment.port)[0] >= tx_before + 20  # it went through VXLAN
    assert port_counters(two, segment.port)[1] >= rx_before + 20

    # MTU: 1450 fits in one VXLAN packet on the 1500-byte underlay; the endpoint refuses more.
    full = ping(a, f"{prefix}.2", "-c", "2", "-M", "do", "-s", str(VXLAN_MTU - 28))
    assert full.returncode == 0, full.stdout + full.stderr
    over = ping(a, f"{prefix}.2", "-c", "1", "-M", "do", "-s", str(VXLAN_MTU - 27))
    assert over.returncode != 0
    underlay_mtu = json.loads(run(["ip", "-n", one.netns, "-j", "link", "show", "underlay0"]))
    assert underlay_mtu[0]["mtu"] == 1500

    # Without head-end replication to host two, b is unreachable from host one: no other path.
    run(["ip", "-n", b, "neigh", "flush", "all"])
    run(["bridge", "-n", one.netns, "fdb", "del", "00:00:00:00:00:00",
         "dev", segment.port, "dst", two.ip])  # fmt: skip
    run(["ip", "-n", a, "neigh", "flush", "all"])
    assert ping(a, f"{prefix}.2", "-c", "2").returncode != 0
    # The root namespace cannot reach the endpoints either.
    assert (
        subprocess.run(
            ["ping", "-n", "-c", "1", "-W", "1", f"{prefix}.2"], capture_output=True
        ).returncode
        != 0
    )
    del c
    record("rtt_cross_host_ms", avg_rtt_ms(cross.stdout))
    record("rtt_same_host_ms", avg_rtt_ms(same.stdout))
    record("endpoint_mtu", VXLAN_MTU)


# --- real VMs on lab hosts: disks from the hosts' pools, parameters over the libvirt stream ----


@pytest.fixture(scope="module")
def web_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lab-images")
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-appliances"), str(out), "--json", "--only", "Web"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return Path(json.loads(proc.stdout.splitlines()[0])["dir"])


class StreamChannel:
    """The guest channel (serial port 1, a pty on the host) reached through
    `virDomainOpenConsole` over the host's libvirt connection, so it works over qemu+ssh where
    the host's Unix sockets are out of reach. Speaks the README's "Utility ↔ guest" lines.

    A thread does the blocking reads (a remote stream without an event loop only moves data
    while a call is in progress); it ends when the stream ends (the domain is destroyed)."""

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

    def next_line(self, deadline: float) -> str:
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError("the guest channel said nothing in time") from None

    def deliver(self, params: dict[str, str], timeout: float) -> str:
        """Wait for HELLO, send PARAMS, return the READY/FAILED line."""
        deadline = time.monotonic() + timeout
        while not self.next_line(deadline).startswith("COLLECTIVE HELLO"):
            pass
        payload = base64.b64encode(encode(sorted(params.items())).encode()).decode()
        line = f"COLLECTIVE PARAMS {payload}\n".encode()
        while line:
            line = line[self.stream.send(line) :]
        while True:
            got = self.next_line(deadline)
            if got.startswith(("COLLECTIVE READY", "COLLECTIVE FAILED")):
                return got


def lab_domain_xml(
    image_dir: Path, name: str, pool: str, volume: str, bridge: str, mac: str
) -> str:
    """The appliance's published domain XML, wired for a lab host: the disk a volume of the
    host's pool, the NIC on a VXLAN segment bridge with MTU 1450, the console (serial 0) to a
    file and the guest channel (serial 1) on a pty reached through libvirt."""
    (xml_file,) = image_dir.glob("*.xml")
    root = ET.fromstring(xml_file.read_text())
    root.find("name").text = name  # type: ignore[union-attr]
    devices = root.find("devices")
    assert devices is not None and root.get("type") == "qemu"
    for old in devices.findall("interface") + devices.findall("serial"):
        devices.remove(old)
    for old in devices.findall("console"):
        devices.remove(old)
    disk, *data_disks = devices.findall("disk")
    for extra in data_disks:  # the program disk only: no data disk is given in these tests
        devices.remove(extra)
    disk.set("type", "volume")
    disk.remove(disk.find("source"))  # type: ignore[arg-type]
    ET.SubElement(disk, "source", pool=pool, volume=volume)
    nic = ET.SubElement(devices, "interface", type="bridge")
    ET.SubElement(nic, "source", bridge=bridge)
    ET.SubElement(nic, "mac", address=mac)
    ET.SubElement(nic, "model", type="virtio")
    ET.SubElement(nic, "mtu", size=str(VXLAN_MTU))
    console = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(console, "source", path=f"/var/log/libvirt/qemu/{name}.console")
    ET.SubElement(console, "target", port="0")
    channel = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(channel, "target", port="1")
    return ET.tostring(root, encoding="unicode")


@dataclass
class LabVM:
    host: LabHost
    conn: libvirt.virConnect
    pool: libvirt.virStoragePool
    name: str
    mac: str
    domain: libvirt.virDomain | None = None

    def console(self) -> str:
        path = Path(self.host.directory, "log", "qemu", f"{self.name}.console")
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def lab_pools(
    lab: Lab,
) -> Iterator[list[tuple[LabHost, libvirt.virConnect, libvirt.virStoragePool]]]:
    """A dir pool on each lab host, made over qemu+ssh; removed with its volumes afterwards."""
    made = []
    try:
        for host in lab.hosts:
            conn = open_remote(host)
            name = f"clab-pool-{secrets.token_hex(3)}"
            xml = (
                f"<pool type='dir'><name>{name}</name>"
                f"<target><path>/var/lib/libvirt/images/{name}</path></target></pool>"
            )
            made.append((host, conn, conn.storagePoolCreateXML(xml, POOL_BUILD)))
        yield made
    finally:
        for _host, conn, pool in made:
            for vol in pool.listAllVolumes():
                vol.delete()
            pool.destroy()
            conn.close()


def place_vm(host, conn, pool, image: Path, bridge: str) -> LabVM:  # type: ignore[no-untyped-def]
    """Upload the program disk into the host's pool, let the host make an overlay, start."""
    (program_disk,) = image.glob("*.qcow2")
    data = program_disk.read_bytes()
    base = pool.createXML(volume_xml("web-base.qcow2", len(data)), 0)
    upload(conn, base, data)
    overlay_xml = (
        "<volume><name>web-overlay.qcow2</name>"
        f"<capacity unit='bytes'>{1 << 30}</capacity>"
        "<target><format type='qcow2'/></target>"
        f"<backingStore><path>{base.path()}</path><format type='qcow2'/></backingStore>"
        "</volume>"
    )
    pool.createXML(overlay_xml, 0)  # made on the host, by its libvirtd (qemu-img there)
    vm = LabVM(host, conn, pool, f"clab-vm-{secrets.token_hex(3)}", random_mac())
    xml = lab_domain_xml(image, vm.name, pool.name(), "web-overlay.qcow2", bridge, vm.mac)
    vm.domain = conn.createXML(xml, 0)
    return vm


def random_mac() -> str:
    return "52:54:00:{:02x}:{:02x}:{:02x}".format(*secrets.token_bytes(3))


def test_real_vms_on_two_hosts_get_parameters_over_ssh_and_talk_over_vxlan(
    lab_pools, web_image: Path, segment: Segment
) -> None:
    prefix = f"10.213.{random.randrange(1, 255)}"
    started = time.monotonic()
    vms = [place_vm(*made, web_image, segment.bridge) for made in lab_pools[:2]]
    try:
        for index, vm in enumerate(vms):
            channel = StreamChannel(vm.conn, vm.domain)
            answer = channel.deliver(
                {
                    "domain": f"lab{index}.test",
                    "title": f"served from {vm.host.name}",
                    "ethernet0.ip": f"{prefix}.{11 + index}",
                    "ethernet0.netmask": "255.255.255.0",
                    "ethernet0.mac": vm.mac,
                },
                timeout=BOOT_TIMEOUT,
            )
            assert answer == "COLLECTIVE READY", f"{answer}\n{vm.console()[-2000:]}"
            # qemu runs inside the lab host's network namespace, not the machine's.
            pids = in_host(vm.host, ["pgrep", "-f", f"guest={vm.name}"]).stdout.split()
            assert pids
            assert os.readlink(f"/proc/{pids[0]}/ns/net") == os.readlink(
                f"/proc/{vm.host.pids['libvirtd']}/ns/net"
            )
        record("two_vms_ready_s", round(time.monotonic() - started, 1))
        one, two = segment.hosts
        probe = segment.endpoint(one, f"{prefix}.1")  # on host one's bridge
        same = ping(probe, f"{prefix}.11", "-c", "20", "-i", "0.05")
        cross = ping(probe, f"{prefix}.12", "-c", "20", "-i", "0.05")
        assert same.returncode == 0, same.stdout + vms[0].console()[-2000:]
        assert cross.returncode == 0, cross.stdout + vms[1].console()[-2000:]
        # The web page of the VM on host two, fetched from host one over the VXLAN segment.
        page = in_netns(probe, ["curl", "-sS", "--max-time", "10", f"http://{prefix}.12/"])
        assert "served from lab2" in page.stdout, page.stderr
        # A full 1450-byte frame (DF set) crosses: guest and segment agree on the MTU.
        full = ping(probe, f"{prefix}.12", "-c", "2", "-M", "do", "-s", str(VXLAN_MTU - 28))
        assert full.returncode == 0, full.stdout + full.stderr
        record("vm_rtt_same_host_ms", avg_rtt_ms(same.stdout))
        record("vm_rtt_cross_host_ms", avg_rtt_ms(cross.stdout))
    finally:
        for vm in vms:
            if vm.domain is not None:
                vm.domain.destroy()


# --- 4. scripts/lab down leaves nothing behind ------------------------------------------------


def test_bad_host_counts_are_refused_and_change_nothing(lab: Lab) -> None:
    before = Path(lab.hosts[0].directory).parent.joinpath("state.json").read_text()
    pids = [pid for host in lab.hosts for pid in host.pids.values()]
    for count in ("0", "10", "-1"):
        proc = lab_cli("up", count)
        assert proc.returncode == 1
        assert "host count must be between 1 and 9" in proc.stderr
    assert lab_cli("up", "two").returncode == 2  # argparse: not a number
    assert Path(lab.hosts[0].directory).parent.joinpath("state.json").read_text() == before
    assert all(Path(f"/proc/{pid}").exists() for pid in pids)


def test_down_removes_guests_networks_processes_namespaces_links_and_files(lab: Lab) -> None:
    host = lab.hosts[0]
    conn = open_remote(host)
    conn.networkCreateXML(
        "<network><name>clab-left</name><bridge name='clableft0'/><dns enable='no'/>"
        "<ip address='10.214.2.1' netmask='255.255.255.0'/></network>"
    )
    conn.close()
    segment = Segment(lab.hosts, vni=4242)
    segment.make()  # a bridge and VXLAN port per host, FDB entries
    stray = subprocess.Popen([*host.nsenter(), "sleep", "600"])
    host_net = os.readlink(f"/proc/{host.pids['libvirtd']}/ns/net")
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{stray.pid}/ns/net") != host_net:  # nsenter has not entered yet
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = [int(p) for h in lab.hosts for p in run(["ip", "netns", "pids", h.netns]).split()]
    assert stray.pid in pids and host.pids["libvirtd"] in pids
    system_pid = Path("/run/libvirtd.pid").read_text()

    started = time.monotonic()
    proc = lab_cli("down")
    down_seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    stray.wait(timeout=10)

    assert leftovers() == {}
    assert not [p for p in pids if is_running(p)]  # gone, or a zombie waiting for its reaper
    assert not [n for n in run(["ip", "netns", "list"]).split() if n.startswith("clab")]
    links = run(["ip", "-o", "link", "show"])
    assert "clab0" not in links and "clab1u" not in links
    assert not Path(host.directory).exists() and not Path(lab.keyfile).exists()
    assert not Path("/etc/ssh/ssh_config.d/collective-lab.conf").exists()
    assert "/run/collective-lab" not in run(["findmnt", "-rn", "-o", "TARGET"])
    # The machine's own libvirtd is untouched.
    assert Path("/run/libvirtd.pid").read_text() == system_pid
    assert (
        subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode
        == 0
    )
    record("lab_down_s", round(down_seconds, 2))
    # Down again: nothing to do, still success.
    assert lab_cli("down").returncode == 0


def test_up_clears_what_a_failed_lab_left_behind() -> None:
    with lab_lock():  # no fixture: this test makes its own leftovers
        lab_cli("down")
        run(["ip", "netns", "add", "clab7"])
        run(["ip", "link", "add", "clab0", "type", "bridge"])
        Path("/run/collective-lab/lab7").mkdir(parents=True)
        assert set(leftovers()) == {"namespaces", "links", "files"}
        started = time.monotonic()
        proc = lab_cli("up", "2")
        assert proc.returncode == 0, proc.stderr
        record("lab_up_2_hosts_s", round(time.monotonic() - started, 2))
        assert "clab7" not in run(["ip", "netns", "list"])
        assert not Path("/run/collective-lab/lab7").exists()
        lab_now = Lab.load()
        assert [h.name for h in lab_now.hosts] == ["lab1", "lab2"]
        assert lab_cli("down").returncode == 0
        assert leftovers() == {}
