"""Real appliance images on real qemu (TCG) through libvirtd: boot, parameters, readiness.

The images come from `scripts/build-appliances` (cached, so only a cold run builds). Each test
defines transient domains from the appliances' published domain XML, rewritten the way the
utility does (disk sources onto fresh copy-on-write overlays, NIC onto a network of our own, the
console to a file, serial port 1 onto a Unix socket), and talks to the guest agent with
`utility.channel.GuestChannel`. The agent's console lines (`collective-agent <epoch> <event> …`)
are what the tests read to see what the guest did and in which order.

Network traffic goes only over an isolated libvirt network (a bridge with no `<forward>`) that
the test creates on a random 10.251.N.0/24 and removes afterwards.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cvl.maps import encode
from utility.channel import GuestChannel
from utility.errors import GuestChannelError

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-appliances"
BOOT_TIMEOUT = 180.0  # TCG on a shared 2-core machine; a quiet boot is about 15 s


def _connect() -> libvirt.virConnect:
    try:
        return libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:  # pragma: no cover - only where libvirtd is missing
        pytest.skip(f"qemu:///system is not usable here: {exc}")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A short, world-traversable directory: qemu (user libvirt-qemu) must reach the disks and
    socket paths stay under the 108-byte limit."""
    path = Path(tempfile.mkdtemp(prefix="cg-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def images(workdir: Path) -> dict[str, Path]:
    """Build (or take from the cache) the images these tests boot; source dir -> output dir."""
    out = workdir / "images"
    proc = subprocess.run([str(BUILD), str(out), "--json", "--only", "Web", "--only", "DNS",
                           "--only", "DNS-v2"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {row["appliance"]: Path(row["dir"]) for row in rows}


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    c = _connect()
    yield c
    c.close()


@dataclass
class Network:
    """An isolated libvirt network: a bridge with the host at .1 and no uplink."""

    name: str
    prefix: str  # "10.251.N"


@pytest.fixture
def network(conn: libvirt.virConnect) -> Iterator[Network]:
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for _ in range(50):
        prefix = f"10.251.{random.randrange(1, 255)}"
        if f"{prefix}." not in used:
            break
    tag = secrets.token_hex(3)
    name = f"cg-test-{tag}"
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "bridge", name=f"cgb{tag}", stp="off", delay="0")
    ET.SubElement(root, "dns", enable="no")
    ET.SubElement(root, "ip", address=f"{prefix}.1", netmask="255.255.255.0")
    net = conn.networkCreateXML(ET.tostring(root, encoding="unicode"))
    try:
        yield Network(name, prefix)
    finally:
        net.destroy()


@dataclass
class Guest:
    """One appliance VM: an overlay over the image's program disk, an optional data disk."""

    conn: libvirt.virConnect
    image_dir: Path
    home: Path
    name: str = field(default_factory=lambda: f"cg-{secrets.token_hex(4)}")
    network: Network | None = None
    mac: str = field(default_factory=lambda: "52:54:00:%02x:%02x:%02x" % tuple(secrets.token_bytes(3)))
    data_disk: Path | None = None
    domain: libvirt.virDomain | None = None
    channel: GuestChannel | None = None

    @property
    def console_path(self) -> Path:
        return self.home / f"{self.name}.console"

    @property
    def socket_path(self) -> Path:
        return self.home / f"{self.name}.sock"

    def domain_xml(self) -> str:
        """The published domain XML, rewritten the way the utility wires a VM."""
        (xml_file,) = self.image_dir.glob("*.xml")
        root = ET.fromstring(xml_file.read_text())
        root.find("name").text = self.name  # type: ignore[union-attr]
        devices = root.find("devices")
        assert devices is not None
        for disk in devices.findall("disk"):
            target = disk.find("target").get("dev")  # type: ignore[union-attr]
            source = disk.find("source")
            if target == "vda":
                overlay = self.home / f"{self.name}.qcow2"
                (base,) = self.image_dir.glob("*.qcow2")
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                                "-b", str(base), str(overlay)], check=True)
                source.set("file", str(overlay))  # type: ignore[union-attr]
            elif self.data_disk is not None:
                source.set("file", str(self.data_disk))  # type: ignore[union-attr]
            else:
                devices.remove(disk)
        for iface in devices.findall("interface"):
            if self.network is None:
                devices.remove(iface)
                continue
            iface.find("source").set("network", self.network.name)  # type: ignore[union-attr]
            ET.SubElement(iface, "mac", address=self.mac)
        for old in devices.findall("serial") + devices.findall("console"):
            devices.remove(old)
        console = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(console, "source", path=str(self.console_path))
        ET.SubElement(console, "target", port="0")
        chan = ET.SubElement(devices, "serial", type="unix")
        ET.SubElement(chan, "source", mode="bind", path=str(self.socket_path))
        ET.SubElement(chan, "target", port="1")
        return ET.tostring(root, encoding="unicode")

    def start(self) -> None:
        self.domain = self.conn.createXML(self.domain_xml(), 0)
        self.channel = GuestChannel(self.socket_path, connect_timeout=30)

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self) -> list[tuple[float, str, str]]:
        """The agent's milestones from the console: (epoch seconds, event, details)."""
        found = []
        for line in self.console().splitlines():
            idx = line.find("collective-agent ")
            if idx < 0:
                continue
            parts = line[idx:].split(" ", 3)
            if len(parts) >= 3:
                found.append((float(parts[1]), parts[2], parts[3] if len(parts) > 3 else ""))
        return found

    def event_details(self, event: str) -> list[str]:
        return [details for _, name, details in self.events() if name == event]

    def shutdown(self, timeout: float = 60.0) -> bool:
        """ACPI power button; True when the guest powered itself off in time."""
        assert self.domain is not None
        self.domain.shutdown()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.domain.isActive():
                    return True
            except libvirt.libvirtError:
                return True  # transient domain gone: it powered off
            time.sleep(0.3)
        return False

    def destroy(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.domain is not None:
            try:
                self.domain.destroy()
            except libvirt.libvirtError:
                pass
            self.domain = None


@pytest.fixture
def guests(conn: libvirt.virConnect, workdir: Path) -> Iterator[list[Guest]]:
    """Guests a test starts; every one is destroyed afterwards, passed or failed."""
    made: list[Guest] = []
    yield made
    for guest in made:
        guest.destroy()


def new_guest(guests: list[Guest], conn: libvirt.virConnect, image_dir: Path, workdir: Path,
              **kw: object) -> Guest:
    guest = Guest(conn, image_dir, workdir, **kw)  # type: ignore[arg-type]
    guests.append(guest)
    return guest


def test_boots_takes_parameters_and_reconfigures_without_reboot(
        conn: libvirt.virConnect, images: dict[str, Path], workdir: Path, guests: list[Guest]) -> None:
    guest = new_guest(guests, conn, images["Web"], workdir)
    guest.start()
    assert guest.channel is not None
    guest.channel.deliver({"domain": ["acme.test"], "title": ["First & 100% real"]},
                          timeout=BOOT_TIMEOUT)
    # The service inside the guest serves a page rendered from the parameter.
    assert guest.event_details("status") == ["title=First & 100% real"]
    assert guest.channel.hello_version == "1"
    boots = guest.event_details("boot")
    assert len(boots) == 1 and "appliance=Web" in boots[0]

    guest.channel.resend({"domain": ["acme.test"], "title": ["Second"]}, timeout=60)
    assert guest.event_details("status") == ["title=First & 100% real", "title=Second"]
    assert len(guest.event_details("boot")) == 1, "resend must not reboot the guest"
    order = [name for _, name, _ in guest.events()]
    assert order.index("boot") < order.index("agent-start") < order.index("params") \
        < order.index("configured") < order.index("service-started") < order.index("ready")

    # A parameter set the service cannot use is reported with the guest's reason.
    with pytest.raises(GuestChannelError, match="required parameter domain is not set"):
        guest.channel.resend({"title": ["no domain"]}, timeout=60)

    # The ACPI power button (libvirt shutdown) stops the service and powers off.
    assert guest.shutdown(), guest.console()[-2000:]
    assert guest.event_details("shutdown") == ["begin", "done"]


def dig(server: str, name: str, rtype: str = "A") -> list[str]:
    proc = subprocess.run(["dig", f"@{server}", name, rtype, "+short", "+time=2", "+tries=3"],
                          capture_output=True, text=True, timeout=30)
    return proc.stdout.splitlines()


def test_dns_and_web_on_an_isolated_network_with_data_kept_across_an_update(
        conn: libvirt.virConnect, images: dict[str, Path], workdir: Path, guests: list[Guest],
        network: Network) -> None:
    p = network.prefix
    data = workdir / f"data-{secrets.token_hex(3)}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data), "100M"], check=True)
    dns = new_guest(guests, conn, images["DNS"], workdir, network=network, data_disk=data)
    web = new_guest(guests, conn, images["Web"], workdir, network=network)
    dns_params = {
        "domain": ["acme.test"],
        # map values as CVL evaluates them: `{ name => "web", ip => … }` is an escaped map string
        "dnshosts": [encode([("name", "web"), ("ip", f"{p}.3")]),
                     encode([("name", "dns"), ("ip", f"{p}.2")])],
        "forwarders": [f"{p}.1"],
        "datadisks": [encode([("device", "vdb"), ("size", "100mb")])],
        "ethernet0.ip": [f"{p}.2"], "ethernet0.netmask": ["255.255.255.0"],
        "ethernet0.mac": [dns.mac],
    }
    dns.start()
    web.start()
    assert dns.channel is not None and web.channel is not None
    dns.channel.deliver(dns_params, timeout=BOOT_TIMEOUT)
    web.channel.deliver({"domain": ["acme.test"], "ethernet0.ip": [f"{p}.3"],
                         "ethernet0.netmask": ["255.255.255.0"], "ethernet0.mac": [web.mac]},
                        timeout=BOOT_TIMEOUT)
    assert any("fresh disk vdb" in d for d in dns.event_details("data"))

    # A real DNS query from the host, over our bridge, for the name of the other appliance...
    assert dig(f"{p}.2", "web.acme.test") == [f"{p}.3"]
    assert dig(f"{p}.2", "appliance.acme.test", "TXT") == ['"collective DNS 1"']
    # ...whose page we then fetch at the address DNS gave.
    page = urllib.request.urlopen(f"http://{p}.3/", timeout=20).read().decode()
    assert "acme.test groupware" in page

    # A record written to the data disk through the appliance's admin port.
    answer = urllib.request.urlopen(
        f"http://{p}.2:8053/cgi-bin/records?name=kept&ip=192.0.2.7", timeout=20).read().decode()
    assert "added kept 192.0.2.7" in answer
    assert dig(f"{p}.2", "kept.acme.test") == ["192.0.2.7"]

    # Resent parameters (new forwarders) reconfigure DNS without a reboot.
    dns.channel.resend({**dns_params, "forwarders": [f"{p}.1", f"{p}.254"]}, timeout=60)
    assert dns.event_details("status")[-1].endswith(f"forwarders={p}.1,{p}.254, records=1")
    assert len(dns.event_details("boot")) == 1

    # Update: stop v1, boot v2 over the same data disk; it migrates format 1 -> 2 and keeps it.
    assert dns.shutdown()
    dns.destroy()
    dns2 = new_guest(guests, conn, images["DNS-v2"], workdir, network=network, data_disk=data,
                     mac=dns.mac)
    dns2.start()
    assert dns2.channel is not None
    dns2.channel.deliver(dns_params, timeout=BOOT_TIMEOUT)
    assert dns2.event_details("migrate") == ["data format 1 -> 2"]
    assert dig(f"{p}.2", "appliance.acme.test", "TXT") == ['"collective DNS 2"']
    assert dig(f"{p}.2", "kept.acme.test") == ["192.0.2.7"]
    assert dig(f"{p}.2", "web.acme.test") == [f"{p}.3"]
