"""Appliance images: their size beside the paper's, the cached rebuild, and boot-to-READY under TCG.

* Size: each program disk (qcow2) from `scripts/build-appliances`; the baseline is the paper's
  published figure (Figure 4: about 500 MB per appliance), not a measurement here.
* Update delta DNS v1 -> v2: a qcow2 overlay over v1 holding only the clusters v2 changed, beside
  the whole v2 disk. The build puts what changes least first (kernel, modules, service binaries)
  and keeps the FAT layout fixed, so a release that changes its own files changes little disk.
* Cached rebuild of every image: the baseline is copying the same output files, i.e. the floor.
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

from utility.channel import GuestChannel

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-appliances"
PAPER_IMAGE_BYTES = 500e6
BOOTS = 3


def build(outdir: Path, *only: str) -> list[dict]:
    args = [arg for name in only for arg in ("--only", name)]
    proc = subprocess.run([str(BUILD), str(outdir), "--json", *args], capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"build-appliances failed: {proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def domain_xml(image_dir: Path, work: Path, name: str, direct: tuple[Path, Path] | None) -> str:
    """The published XML wired like the utility does (overlay, console file, channel socket);
    with `direct`, the kernel and initramfs are handed to qemu instead of read from the disk."""
    (xml_file,) = image_dir.glob("*.xml")
    (base,) = image_dir.glob("*.qcow2")
    root = ET.fromstring(xml_file.read_text())
    root.find("name").text = name  # type: ignore[union-attr]
    devices = root.find("devices")
    assert devices is not None
    for disk in devices.findall("disk"):
        if disk.find("target").get("dev") != "vda":  # type: ignore[union-attr]
            devices.remove(disk)
            continue
        overlay = work / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                        str(overlay)], check=True)
        disk.find("source").set("file", str(overlay))  # type: ignore[union-attr]
    for tag in ("interface", "serial", "console"):
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


def boot_to_ready(conn: object, image_dir: Path, work: Path,
                  direct: tuple[Path, Path] | None = None) -> float:
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


def extract_boot_files(image_dir: Path, work: Path) -> tuple[Path, Path]:
    """Kernel and initramfs copied out of the program disk's FAT filesystem."""
    (base,) = image_dir.glob("*.qcow2")
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(base), str(raw)], check=True)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    for name in ("vmlinuz", "initrd.gz"):
        subprocess.run(["mcopy", "-n", "-i", str(raw), f"::{name}", str(work / name)],
                       check=True, env=env)
    raw.unlink()
    return work / "vmlinuz", work / "initrd.gz"


def update_delta(old: Path, new: Path, out: Path) -> int:
    """Bytes of a qcow2 overlay over `old` holding only what `new` changed (`qemu-img rebase` in
    safe mode compares the data: an empty overlay over `new`, rebased onto `old`)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(new),
                    str(out)], check=True)
    subprocess.run(["qemu-img", "rebase", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(old),
                    str(out)], check=True)
    return out.stat().st_size


def rows(only: Callable[[str], bool]) -> Iterator[Row]:
    work = Path(tempfile.mkdtemp(prefix="cg-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    try:
        images = build(work / "images")
        for image in images:
            name = f"image size: {image['appliance']} (program disk, qcow2)"
            if only(name):
                yield Row(name, image["bytes"], "B", PAPER_IMAGE_BYTES,
                          "paper Fig. 4: ~500 MB each (published)", "goal: a few MB")

        name = "update delta: DNS v1 -> v2 program disk (qcow2 overlay)"
        if only(name):
            by = {i["appliance"]: Path(i["disk"]) for i in images}
            delta = update_delta(by["DNS"], by["DNS-v2"], work / "delta.qcow2")
            yield Row(name, delta, "B", by["DNS-v2"].stat().st_size, "the whole v2 program disk",
                      "paper: a version stores only the changes from the previous one")

        name = f"image build, all {len(images)} appliances, cached"
        if only(name):
            ours = median_time(lambda: build(work / "rebuild"), repeat=3)

            def copy_only() -> None:
                shutil.rmtree(work / "copy", ignore_errors=True)
                shutil.copytree(work / "images", work / "copy")

            yield Row(name, ours, "s", median_time(copy_only, repeat=3),
                      "copying the same files", "goal: near-instant")

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
            conn.close()
            yield Row(name, statistics.median(ours), "s", statistics.median(base),
                      "same kernel+initramfs booted directly (no BIOS disk reads)",
                      f"median of {BOOTS}",
                      "runs: " + ", ".join(f"{t:.1f}" for t in ours))
    finally:
        shutil.rmtree(work, ignore_errors=True)
