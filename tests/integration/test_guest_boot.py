"""Real appliance images on real qemu (TCG) through libvirtd: boot, parameters, readiness.

The images come from `scripts/build-appliances` (cached, so only a cold run builds). Each test
defines transient domains from the appliances' published domain XML, rewritten the way the
utility does (disk sources onto fresh copy-on-write overlays, NIC onto a network of our own, the
console to a file, serial port 1 onto a Unix socket), and talks to the guest agent with
`utility.adapters.guest_channel.GuestChannel`. The agent's console lines
(`collective-agent <epoch> <event> …`) are what the tests read to see what the guest did and in
which order.

Network traffic goes only over an isolated libvirt network (a bridge with no `<forward>`) that
the test creates on a random 10.251.N.0/24 and removes afterwards.
"""

from __future__ import annotations

import json
import random
import re
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
from utility.adapters.guest_channel import GuestChannel
from utility.errors import GuestChannelError

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-appliances"
ARTIFACTS = ROOT / "artifacts"
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
    wanted = ["Web", "DNS", "DNS-v2", "DNS-bad", "LDAP", "DHCP", "Firewall"]
    cmd = [str(BUILD), str(out), "--json", *(arg for name in wanted for arg in ("--only", name))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
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
    bridge: str


def _create_network(conn: libvirt.virConnect) -> tuple[Network, libvirt.virNetwork]:
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
    return Network(name, prefix, f"cgb{tag}"), net


@pytest.fixture
def network(conn: libvirt.virConnect) -> Iterator[Network]:
    made, net = _create_network(conn)
    try:
        yield made
    finally:
        net.destroy()


@pytest.fixture
def outside(conn: libvirt.virConnect) -> Iterator[Network]:
    """A second isolated network: the "outside" of a firewall."""
    made, net = _create_network(conn)
    try:
        yield made
    finally:
        net.destroy()


def random_mac() -> str:
    """A random MAC in qemu's locally administered 52:54:00 range."""
    return "52:54:00:{:02x}:{:02x}:{:02x}".format(*secrets.token_bytes(3))


@dataclass(eq=False)
class Guest:
    """One appliance VM: an overlay over the image's program disk, an optional data disk."""

    conn: libvirt.virConnect
    image_dir: Path
    home: Path
    name: str = field(default_factory=lambda: f"cg-{secrets.token_hex(4)}")
    network: Network | None = None
    mac: str = field(default_factory=lambda: random_mac())
    more_nics: list[tuple[Network, str]] = field(default_factory=list)  # ethernet1, …
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
                subprocess.run(
                    [
                        "qemu-img",
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-F",
                        "qcow2",
                        "-b",
                        str(base),
                        str(overlay),
                    ],
                    check=True,
                )
                source.set("file", str(overlay))  # type: ignore[union-attr]
            elif self.data_disk is not None:
                source.set("file", str(self.data_disk))  # type: ignore[union-attr]
            else:
                devices.remove(disk)
        wiring = ([(self.network, self.mac)] if self.network else []) + self.more_nics
        for index, iface in enumerate(devices.findall("interface")):
            if index >= len(wiring):
                devices.remove(iface)
                continue
            net, mac = wiring[index]
            iface.find("source").set("network", net.name)  # type: ignore[union-attr]
            ET.SubElement(iface, "mac", address=mac)
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

    def wait_for(self, event: str, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until the console shows `event` `count` times. The console (ttyS0) drains after
        the channel (ttyS1), so a line logged before READY may reach the file after it."""
        deadline = time.monotonic() + timeout
        while len(self.event_details(event)) < count:
            assert time.monotonic() < deadline, f"no {count}x {event} on the console of {self.name}"
            time.sleep(0.1)

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
    keep = ARTIFACTS / "guest-consoles"
    keep.mkdir(parents=True, exist_ok=True)
    for guest in made:
        guest.destroy()
        if guest.console_path.exists():  # kept for whoever reads a failure
            shutil.copyfile(guest.console_path, keep / f"{guest.name}.log")


def new_guest(
    guests: list[Guest], conn: libvirt.virConnect, image_dir: Path, workdir: Path, **kw: object
) -> Guest:
    guest = Guest(conn, image_dir, workdir, **kw)  # type: ignore[arg-type]
    guests.append(guest)
    return guest


def test_boots_takes_parameters_and_reconfigures_without_reboot(
    conn: libvirt.virConnect, images: dict[str, Path], workdir: Path, guests: list[Guest]
) -> None:
    guest = new_guest(guests, conn, images["Web"], workdir)
    guest.start()
    assert guest.channel is not None
    guest.channel.deliver(
        {"domain": ["acme.test"], "title": ["First & 100% real"]}, timeout=BOOT_TIMEOUT
    )
    guest.wait_for("ready")
    # The service inside the guest serves a page rendered from the parameter.
    assert guest.event_details("status") == ["title=First & 100% real"]
    assert guest.channel.hello_version == "1"
    boots = guest.event_details("boot")
    assert len(boots) == 1 and "appliance=Web" in boots[0]

    guest.channel.resend({"domain": ["acme.test"], "title": ["Second"]}, timeout=60)
    guest.wait_for("ready", 2)
    assert guest.event_details("status") == ["title=First & 100% real", "title=Second"]
    assert len(guest.event_details("boot")) == 1, "resend must not reboot the guest"
    order = [name for _, name, _ in guest.events()]
    assert (
        order.index("boot")
        < order.index("agent-start")
        < order.index("params")
        < order.index("configured")
        < order.index("service-started")
        < order.index("ready")
    )

    # A parameter set the service cannot use is reported with the guest's reason.
    with pytest.raises(GuestChannelError, match="required parameter domain is not set"):
        guest.channel.resend({"title": ["no domain"]}, timeout=60)

    # The ACPI power button (libvirt shutdown) stops the service and powers off.
    assert guest.shutdown(), guest.console()[-2000:]
    assert guest.event_details("shutdown") == ["begin", "done"]


def dig(server: str, name: str, rtype: str = "A") -> list[str]:
    proc = subprocess.run(
        ["dig", f"@{server}", name, rtype, "+short", "+time=2", "+tries=3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.stdout.splitlines()


def test_dns_and_web_on_an_isolated_network_with_data_kept_across_an_update(
    conn: libvirt.virConnect,
    images: dict[str, Path],
    workdir: Path,
    guests: list[Guest],
    network: Network,
) -> None:
    p = network.prefix
    data = workdir / f"data-{secrets.token_hex(3)}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data), "100M"], check=True)
    dns = new_guest(guests, conn, images["DNS"], workdir, network=network, data_disk=data)
    web = new_guest(guests, conn, images["Web"], workdir, network=network)
    dns_params = {
        "domain": ["acme.test"],
        # map values as CVL evaluates them: `{ name => "web", ip => … }` is an escaped map string
        "dnshosts": [
            encode([("name", "web"), ("ip", f"{p}.3")]),
            encode([("name", "dns"), ("ip", f"{p}.2")]),
        ],
        "forwarders": [f"{p}.1"],
        "datadisks": [encode([("device", "vdb"), ("size", "100mb")])],
        "ethernet0.ip": [f"{p}.2"],
        "ethernet0.netmask": ["255.255.255.0"],
        "ethernet0.mac": [dns.mac],
    }
    dns.start()
    web.start()
    assert dns.channel is not None and web.channel is not None
    dns.channel.deliver(dns_params, timeout=BOOT_TIMEOUT)
    dns.wait_for("ready")
    web.channel.deliver(
        {
            "domain": ["acme.test"],
            "ethernet0.ip": [f"{p}.3"],
            "ethernet0.netmask": ["255.255.255.0"],
            "ethernet0.mac": [web.mac],
        },
        timeout=BOOT_TIMEOUT,
    )
    assert any("fresh disk vdb" in d for d in dns.event_details("data"))

    # A real DNS query from the host, over our bridge, for the name of the other appliance...
    assert dig(f"{p}.2", "web.acme.test") == [f"{p}.3"]
    assert dig(f"{p}.2", "appliance.acme.test", "TXT") == ['"collective DNS 1"']
    # ...whose page we then fetch at the address DNS gave.
    page = urllib.request.urlopen(f"http://{p}.3/", timeout=20).read().decode()
    assert "acme.test groupware" in page

    # A record written to the data disk through the appliance's admin port.
    answer = (
        urllib.request.urlopen(
            f"http://{p}.2:8053/cgi-bin/records?name=kept&ip=192.0.2.7", timeout=20
        )
        .read()
        .decode()
    )
    assert "added kept 192.0.2.7" in answer
    assert dig(f"{p}.2", "kept.acme.test") == ["192.0.2.7"]

    # Resent parameters (new forwarders) reconfigure DNS without a reboot.
    dns.channel.resend({**dns_params, "forwarders": [f"{p}.1", f"{p}.254"]}, timeout=60)
    dns.wait_for("ready", 2)
    assert dns.event_details("status")[-1].endswith(f"forwarders={p}.1,{p}.254, records=1")
    assert len(dns.event_details("boot")) == 1

    # Update: stop v1, boot v2 over the same data disk; it migrates format 1 -> 2 and keeps it.
    assert dns.shutdown()
    dns.destroy()
    dns2 = new_guest(
        guests, conn, images["DNS-v2"], workdir, network=network, data_disk=data, mac=dns.mac
    )
    dns2.start()
    assert dns2.channel is not None
    dns2.channel.deliver(dns_params, timeout=BOOT_TIMEOUT)
    dns2.wait_for("ready")
    assert dns2.event_details("migrate") == ["data format 1 -> 2"]
    # Console timestamps are wall-clock and comparable across VMs: v1 was ready before v2 booted.
    v1_ready = max(t for t, e, _ in dns.events() if e == "ready")
    v2_boot = min(t for t, e, _ in dns2.events() if e == "boot")
    assert v1_ready < v2_boot
    assert dig(f"{p}.2", "appliance.acme.test", "TXT") == ['"collective DNS 2"']
    assert dig(f"{p}.2", "kept.acme.test") == ["192.0.2.7"]
    assert dig(f"{p}.2", "web.acme.test") == [f"{p}.3"]


@pytest.fixture
def netns_on(network: Network) -> Iterator[tuple[str, str, str]]:
    """A network namespace whose veth is plugged into `network`'s bridge: (netns, ifname, mac)."""
    tag = secrets.token_hex(3)
    ns, host_end, ns_end = f"cgns{tag}", f"cgh{tag}", f"cgn{tag}"
    mac = random_mac()
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end],
        ["ip", "link", "set", ns_end, "netns", ns],
        ["ip", "-n", ns, "link", "set", ns_end, "address", mac],
        ["ip", "-n", ns, "link", "set", ns_end, "up"],
        ["ip", "link", "set", host_end, "master", network.bridge],
        ["ip", "link", "set", host_end, "up"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield ns, ns_end, mac
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def tcp_connects(host: str, port: int, timeout: float = 3.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_ldap_dhcp_and_a_firewall_forwarding_exactly_its_services(
    conn: libvirt.virConnect,
    images: dict[str, Path],
    workdir: Path,
    guests: list[Guest],
    network: Network,
    outside: Network,
    netns_on: tuple[str, str, str],
) -> None:
    p, o = network.prefix, outside.prefix
    mask = ["255.255.255.0"]
    data = workdir / f"ldap-{secrets.token_hex(3)}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data), "100M"], check=True)
    ldap = new_guest(guests, conn, images["LDAP"], workdir, network=network, data_disk=data)
    web = new_guest(guests, conn, images["Web"], workdir, network=network)
    dhcp = new_guest(guests, conn, images["DHCP"], workdir, network=network)
    fw_out_mac = random_mac()
    fw = new_guest(
        guests,
        conn,
        images["Firewall"],
        workdir,
        network=network,
        more_nics=[(outside, fw_out_mac)],
    )
    ns, ns_if, ns_mac = netns_on
    for guest in (ldap, web, dhcp, fw):
        guest.start()
    secret = "pa55 w0rd & more"
    params = {
        ldap: {
            "domain": ["acme.test"],
            "rootdnpass": [secret],
            "proxypw": ["proxy-" + secret],
            "smtppw": ["smtp-" + secret],
            "datadisks": [encode([("device", "vdb"), ("size", "100mb")])],
            "ethernet0.ip": [f"{p}.4"],
            "ethernet0.netmask": mask,
            "ethernet0.mac": [ldap.mac],
            "defaultroute": [f"{p}.254"],
        },
        web: {
            "domain": ["acme.test"],
            "ethernet0.ip": [f"{p}.3"],
            "ethernet0.netmask": mask,
            "ethernet0.mac": [web.mac],
            "defaultroute": [f"{p}.254"],
        },
        dhcp: {
            "domain": ["acme.test"],
            "ethernet0.ip": [f"{p}.5"],
            "ethernet0.netmask": mask,
            "ethernet0.mac": [dhcp.mac],
            "router": [f"{p}.254"],
            "dns": [f"{p}.2"],
            "dhcphosts": [encode([("name", "client"), ("mac", ns_mac), ("ip", f"{p}.50")])],
        },
        fw: {
            "ethernet0.ip": [f"{p}.254"],
            "ethernet0.netmask": mask,
            "ethernet0.mac": [fw.mac],
            "ethernet1.ip": [f"{o}.2"],
            "ethernet1.netmask": mask,
            "ethernet1.mac": [fw_out_mac],
            "services": [
                encode([("port", "80/tcp"), ("ip", f"{p}.3")]),
                encode([("port", "389/tcp"), ("ip", f"{p}.4")]),
            ],
        },
    }
    for guest, values in params.items():
        assert guest.channel is not None
        guest.channel.deliver(values, timeout=BOOT_TIMEOUT)
        guest.wait_for("ready")

    # LDAP: root DN from the domain, base entries seeded on the fresh data disk, bind works.
    status = ldap.event_details("status")[-1]
    assert status.startswith("suffix=dc=acme,dc=test rootdn=cn=admin,dc=acme,dc=test ca=")
    assert re.fullmatch(r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}", status.rsplit("ca=", 1)[1])
    search = subprocess.run(
        [
            "ldapsearch",
            "-x",
            "-LLL",
            "-H",
            f"ldap://{p}.4",
            "-D",
            "cn=admin,dc=acme,dc=test",
            "-w",
            secret,
            "-b",
            "dc=acme,dc=test",
            "(objectClass=organizationalUnit)",
            "ou",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert search.returncode == 0, search.stderr
    assert "ou: people" in search.stdout and "ou: groups" in search.stdout
    wrong = subprocess.run(
        [
            "ldapsearch",
            "-x",
            "-H",
            f"ldap://{p}.4",
            "-D",
            "cn=admin,dc=acme,dc=test",
            "-w",
            "wrong",
            "-b",
            "dc=acme,dc=test",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode == 49  # invalid credentials
    assert secret not in ldap.console()

    # DHCP: a real client in a namespace on the VAN gets its fixed lease.
    lease = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "busybox",
            "udhcpc",
            "-i",
            ns_if,
            "-n",
            "-q",
            "-t",
            "5",
            "-T",
            "2",
            "-s",
            "/bin/true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"lease of {p}.50 obtained" in lease.stdout + lease.stderr, lease.stderr

    # Firewall, from outside: the services are forwarded to the VAN (DNAT), nothing else is.
    page = urllib.request.urlopen(f"http://{o}.2/", timeout=20).read().decode()
    assert "acme.test groupware" in page
    through = subprocess.run(
        [
            "ldapsearch",
            "-x",
            "-LLL",
            "-H",
            f"ldap://{o}.2",
            "-b",
            "dc=acme,dc=test",
            "(ou=people)",
            "dn",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "dn: ou=people,dc=acme,dc=test" in through.stdout, through.stderr
    assert tcp_connects(f"{p}.4", 389)  # LDAP itself is up on the VAN...
    assert not tcp_connects(f"{o}.2", 22)  # ...but only the listed services pass the firewall
    assert not tcp_connects(f"{o}.2", 8053)
    assert fw.event_details("status")[-1] == "services=2 forward=1"


def test_bad_disks_are_refused_and_a_bad_release_never_says_ready(
    conn: libvirt.virConnect, images: dict[str, Path], workdir: Path, guests: list[Guest]
) -> None:
    tag = secrets.token_hex(3)
    # A disk holding something that is not a filesystem: never formatted over, FAILED instead.
    junk_raw = workdir / f"junk-{tag}.raw"
    junk_raw.write_bytes(secrets.token_bytes(1 << 20) + bytes(9 << 20))
    junk = workdir / f"junk-{tag}.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(junk_raw), str(junk)], check=True
    )
    # A filesystem written by a later release (data format 9): v1 must not touch it.
    later = workdir / f"later-{tag}"
    (later / ".collective").mkdir(parents=True)
    (later / ".collective" / "format").write_text("9\n")
    later_raw = workdir / f"later-{tag}.raw"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext2", "-d", str(later), str(later_raw), "16M"], check=True
    )
    later_disk = workdir / f"later-{tag}.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(later_raw), str(later_disk)],
        check=True,
    )
    fresh = workdir / f"fresh-{tag}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(fresh), "100M"], check=True)

    on_junk = new_guest(guests, conn, images["DNS"], workdir, data_disk=junk)
    on_later = new_guest(guests, conn, images["DNS"], workdir, data_disk=later_disk)
    bad = new_guest(guests, conn, images["DNS-bad"], workdir, data_disk=fresh)
    params = {
        "domain": ["acme.test"],
        "dnshosts": [encode([("name", "d"), ("ip", "10.0.0.2")])],
        "datadisks": [encode([("device", "vdb"), ("size", "100mb")])],
    }
    for guest in (on_junk, on_later, bad):
        guest.start()
    assert on_junk.channel is not None and on_later.channel is not None
    assert bad.channel is not None
    with pytest.raises(GuestChannelError, match="vdb is neither all-zero nor a filesystem"):
        on_junk.channel.deliver(params, timeout=BOOT_TIMEOUT)
    with pytest.raises(GuestChannelError, match="data format 9 on vdb is newer than this image"):
        on_later.channel.deliver(params, timeout=BOOT_TIMEOUT)
    # The bad release boots, takes its parameters, starts its service and then stays silent
    # (what the utility's readiness timeout and rollback are for).
    bad.wait_for("agent-start", timeout=BOOT_TIMEOUT)  # booted: the wait below is all silence
    with pytest.raises(GuestChannelError, match="no READY from the guest"):
        bad.channel.deliver(params, timeout=45)
    bad.wait_for("service-started")
    events = [e for _, e, _ in bad.events()]
    assert "service-started" in events and "ready" not in events and "failed" not in events
    raw = junk_raw.read_bytes()[: 1 << 20]
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(junk), str(junk_raw)],
        check=True,
    )  # -U: the VM still has it open
    assert junk_raw.read_bytes()[: 1 << 20] == raw, "the unknown disk must be left untouched"
