"""Appliance images: their size beside the paper's, the cached rebuild, and boot-to-READY under TCG.

* Size: each program disk (qcow2) from `scripts/build-appliances`; the baseline is the paper's
  published figure (Figure 4: about 500 MB per appliance), not a measurement here.
* Update delta DNS v1 -> v2: a qcow2 overlay over v1 holding only the clusters v2 changed, beside
  the whole v2 disk. The build puts what changes least first (kernel, modules, service binaries)
  and keeps the FAT layout fixed, so a release that changes its own files changes little disk.
* Cached rebuild of every image: the baseline is copying the same output files, i.e. the floor.
* Groupware floor: the six appliances started by this harness in dependency order on an
  isolated network (no cluster manager), beside the paper's published 5.0 minutes.
* Boot to READY (Web appliance, median of 3): `virDomainCreateXML` of the published domain XML on
  `qemu:///system` until the guest agent answers READY to its parameters over the guest channel.
  The baseline, measured in the same run, boots the same kernel and initramfs directly
  (`<kernel>`/`<initrd>`, no SeaBIOS/SYSLINUX reading them from the program disk), so the ratio
  is what booting from the program disk costs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import Row, median_time

from utility.adapters.guest_channel import GuestChannel

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-appliances"
PAPER_IMAGE_BYTES = 500e6
BOOTS = 3


def build(outdir: Path, *only: str) -> list[dict]:
    args = [arg for name in only for arg in ("--only", name)]
    proc = subprocess.run(
        [str(BUILD), str(outdir), "--json", *args], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(f"build-appliances failed: {proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def domain_xml(
    image_dir: Path,
    work: Path,
    name: str,
    direct: tuple[Path, Path] | None,
    network: str | None = None,
    macs: tuple[str, ...] = (),
    data_disk: Path | None = None,
) -> str:
    """The published XML wired like the utility does (overlay, console file, channel socket,
    NICs on `network` with `macs`, the data disk); with `direct`, the kernel and initramfs are
    handed to qemu instead of read from the disk."""
    (xml_file,) = image_dir.glob("*.xml")
    (base,) = image_dir.glob("*.qcow2")
    root = ET.fromstring(xml_file.read_text())
    root.find("name").text = name  # type: ignore[union-attr]
    devices = root.find("devices")
    assert devices is not None
    for disk in devices.findall("disk"):
        if disk.find("target").get("dev") != "vda":  # type: ignore[union-attr]
            if data_disk is None:
                devices.remove(disk)
            else:
                disk.find("source").set("file", str(data_disk))  # type: ignore[union-attr]
            continue
        overlay = work / f"{name}.qcow2"
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
        disk.find("source").set("file", str(overlay))  # type: ignore[union-attr]
    for index, nic in enumerate(devices.findall("interface")):
        if network is None or index >= len(macs):
            devices.remove(nic)
            continue
        nic.find("source").set("network", network)  # type: ignore[union-attr]
        ET.SubElement(nic, "mac", address=macs[index])
    for tag in ("serial", "console"):
        for element in devices.findall(tag):
            devices.remove(element)
    console = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(console, "source", path=str(work / f"{name}.console"))
    ET.SubElement(console, "target", port="0")
    chan = ET.SubElement(devices, "serial", type="unix")
    ET.SubElement(chan, "source", mode="bind", path=str(work / f"{name}.sock"))
    ET.SubElement(chan, "target", port="1")
    if direct is not None:
        os_el = root.find("os")
        assert os_el is not None
        ET.SubElement(os_el, "kernel").text = str(direct[0])
        ET.SubElement(os_el, "initrd").text = str(direct[1])
        ET.SubElement(os_el, "cmdline").text = "console=ttyS0 panic=10 quiet"
    return ET.tostring(root, encoding="unicode")


def boot_to_ready(
    conn: object, image_dir: Path, work: Path, direct: tuple[Path, Path] | None = None
) -> float:
    """Seconds from domain creation to READY."""
    import libvirt

    name = f"cg-bench-{secrets.token_hex(4)}"
    xml = domain_xml(image_dir, work, name, direct)
    start = time.perf_counter()
    dom = conn.createXML(xml, 0)  # type: ignore[attr-defined]
    try:
        with GuestChannel(work / f"{name}.sock", connect_timeout=60) as channel:
            channel.deliver({"domain": ["bench.test"]}, timeout=300)
        return time.perf_counter() - start
    finally:
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass


def groupware_boot(conn: object, images: dict[str, Path], work: Path) -> float:
    """Seconds from the first domain creation to the last READY for the Groupware's six
    appliances started in dependency order by this harness (no utility): DHCP, DNS and Firewall
    together, then LDAP (the VAN's CA), then Web and Mail, each stage when the previous one is
    READY."""
    import threading

    import libvirt

    from cvl.maps import encode

    tag = secrets.token_hex(3)
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    sub = next(f"10.250.{n}" for n in range(77, 255) if f"10.250.{n}." not in used)
    net_el = ET.Element("network")
    ET.SubElement(net_el, "name").text = f"cg-bench-{tag}"
    ET.SubElement(net_el, "bridge", name=f"cgbb{tag}", stp="off", delay="0")
    ET.SubElement(net_el, "dns", enable="no")
    ET.SubElement(net_el, "ip", address=f"{sub}.1", netmask="255.255.255.0")
    net = conn.networkCreateXML(ET.tostring(net_el, encoding="unicode"))  # type: ignore[attr-defined]
    mask = ["255.255.255.0"]
    macs = {
        n: f"52:54:00:77:{tag[:2]}:{i:02x}"
        for i, n in enumerate(["DHCP", "DNS", "Firewall", "Firewall1", "LDAP", "Web", "Mail"])
    }
    hosts = {"DHCP": 5, "DNS": 2, "Firewall": 254, "Firewall1": 253, "LDAP": 4, "Web": 3, "Mail": 6}
    ips = {n: f"{sub}.{host}" for n, host in hosts.items()}

    def nic(n: str) -> dict[str, list[str]]:
        return {"ethernet0.ip": [ips[n]], "ethernet0.netmask": mask, "ethernet0.mac": [macs[n]]}

    disk = [encode([("device", "vdb"), ("size", "100mb")])]
    params = {
        "DHCP": {"domain": ["acme.test"], **nic("DHCP")},
        "DNS": {
            "domain": ["acme.test"],
            "datadisks": disk,
            **nic("DNS"),
            "dnshosts": [encode([("name", "l"), ("ip", ips["LDAP"])])],
        },
        "Firewall": {
            **nic("Firewall"),
            "ethernet1.ip": [ips["Firewall1"]],
            "ethernet1.netmask": mask,
            "ethernet1.mac": [macs["Firewall1"]],
            "services": [encode([("port", "80/tcp"), ("ip", ips["Web"])])],
        },
        "LDAP": {
            "domain": ["acme.test"],
            "rootdnpass": ["bench"],
            "proxypw": ["bench-proxy"],
            "smtppw": ["bench-smtp"],
            "certhosts": [
                encode([("name", "w"), ("ip", ips["Web"])]),
                encode([("name", "m"), ("ip", ips["Mail"])]),
            ],
            "datadisks": disk,
            **nic("LDAP"),
        },
        "Web": {"domain": ["acme.test"], "ca": [ips["LDAP"]], "datadisks": disk, **nic("Web")},
        "Mail": {
            "domain": ["acme.test"],
            "ldap": [ips["LDAP"]],
            "ca": [ips["LDAP"]],
            "proxypw": ["bench-proxy"],
            "smtppw": ["bench-smtp"],
            "datadisks": disk,
            **nic("Mail"),
        },
    }
    domains = []
    errors: list[Exception] = []

    def run_one(name: str) -> None:
        vm = f"cg-bench-{name.lower()}-{tag}"
        data = None
        if "datadisks" in params[name]:
            data = work / f"{vm}-data.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(data), "100M"], check=True
            )
        nics = (macs[name], macs["Firewall1"]) if name == "Firewall" else (macs[name],)
        xml = domain_xml(images[name], work, vm, None, f"cg-bench-{tag}", nics, data)
        domains.append(conn.createXML(xml, 0))  # type: ignore[attr-defined]
        try:
            with GuestChannel(work / f"{vm}.sock", connect_timeout=60) as channel:
                channel.deliver(params[name], timeout=300)
        except Exception as exc:  # noqa: BLE001 - reported after the stage
            errors.append(exc)

    start = time.perf_counter()
    try:
        for stage in (["DHCP", "DNS", "Firewall"], ["LDAP"], ["Web", "Mail"]):
            threads = [threading.Thread(target=run_one, args=(n,)) for n in stage]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise RuntimeError(f"Groupware boot failed: {errors[0]}")
        return time.perf_counter() - start
    finally:
        for dom in domains:
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
        net.destroy()


def extract_boot_files(image_dir: Path, work: Path) -> tuple[Path, Path]:
    """Kernel and initramfs copied out of the program disk's FAT filesystem."""
    (base,) = image_dir.glob("*.qcow2")
    raw = work / "disk.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(base), str(raw)], check=True
    )
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    for name in ("vmlinuz", "initrd.gz"):
        subprocess.run(
            ["mcopy", "-n", "-i", str(raw), f"::{name}", str(work / name)], check=True, env=env
        )
    raw.unlink()
    return work / "vmlinuz", work / "initrd.gz"


def update_delta(old: Path, new: Path, out: Path) -> int:
    """Bytes of a qcow2 overlay over `old` holding only what `new` changed (`qemu-img rebase` in
    safe mode compares the data: an empty overlay over `new`, rebased onto `old`)."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(new), str(out)],
        check=True,
    )
    subprocess.run(
        ["qemu-img", "rebase", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(old), str(out)],
        check=True,
    )
    return out.stat().st_size


def rows(only: Callable[[str], bool]) -> Iterator[Row]:
    work = Path(tempfile.mkdtemp(prefix="cg-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    try:
        images = build(work / "images")
        for image in images:
            name = f"image size: {image['appliance']} (program disk, qcow2)"
            if only(name):
                yield Row(
                    name,
                    image["bytes"],
                    "B",
                    PAPER_IMAGE_BYTES,
                    "paper Fig. 4: ~500 MB each (published)",
                    "goal: a few MB",
                )

        name = "update delta: DNS v1 -> v2 program disk (qcow2 overlay)"
        if only(name):
            by = {i["appliance"]: Path(i["disk"]) for i in images}
            delta = update_delta(by["DNS"], by["DNS-v2"], work / "delta.qcow2")
            yield Row(
                name,
                delta,
                "B",
                by["DNS-v2"].stat().st_size,
                "the whole v2 program disk",
                "paper: a version stores only the changes from the previous one",
            )

        name = f"image build, all {len(images)} appliances, cached"
        if only(name):
            ours = median_time(lambda: build(work / "rebuild"), repeat=3)

            def copy_only() -> None:
                shutil.rmtree(work / "copy", ignore_errors=True)
                shutil.copytree(work / "images", work / "copy")

            yield Row(
                name,
                ours,
                "s",
                median_time(copy_only, repeat=3),
                "copying the same files",
                "goal: near-instant",
            )

        name = "boot to READY under TCG: Web appliance from its program disk"
        if only(name):
            try:
                import libvirt

                conn = libvirt.open("qemu:///system")
            except Exception as exc:  # noqa: BLE001 - no libvirtd: say so instead of a row
                raise RuntimeError(f"qemu:///system not usable: {exc}") from exc
            web = next(Path(i["dir"]) for i in images if i["appliance"] == "Web")
            direct = extract_boot_files(web, work)
            ours = [boot_to_ready(conn, web, work) for _ in range(BOOTS)]
            base = [boot_to_ready(conn, web, work, direct) for _ in range(BOOTS)]
            yield Row(
                name,
                statistics.median(ours),
                "s",
                statistics.median(base),
                "same kernel+initramfs booted directly (no BIOS disk reads)",
                f"median of {BOOTS}",
                "runs: " + ", ".join(f"{t:.1f}" for t in ours),
            )
            conn.close()

        name = "Groupware's 6 appliances to READY in dependency order, no utility"
        if only(name):
            import libvirt

            conn = libvirt.open("qemu:///system")
            by = {i["appliance"]: Path(i["dir"]) for i in images}
            runs = [groupware_boot(conn, by, work) for _ in range(BOOTS)]
            conn.close()
            yield Row(
                name,
                statistics.median(runs),
                "s",
                300.0,
                "paper: 5.0 min warm (published; with its cluster manager)",
                f"floor for cui start, goal < 60 s; median of {BOOTS}",
                "3 stages: DHCP+DNS+Firewall, LDAP, Web+Mail; runs: "
                + ", ".join(f"{t:.1f}" for t in runs),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
