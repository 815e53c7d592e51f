"""`scripts/build-appliances`: what the images contain, that they are cached, and bad input.

Real tools throughout (apt-get download, dpkg-deb, mtools, syslinux, qemu-img, GNU cpio to read
back the initramfs this script writes itself); booting them is test_guest_boot.py's job.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-appliances"
EVERY = ["DHCP", "DNS", "DNS-bad", "DNS-v2", "Firewall", "LDAP", "Mail", "Mail-v2", "Web"]


def build(out: Path, *only: str) -> list[dict]:
    args = [arg for name in only for arg in ("--only", name)]
    proc = subprocess.run(
        [str(BUILD), str(out), "--json", *args], capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("images")
    return {row["appliance"]: row for row in build(out)}


def fat_files(disk: Path, tmp: Path) -> dict[str, bytes]:
    raw = tmp / f"{disk.stem}.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw)], check=True
    )
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    listing = subprocess.run(
        ["mdir", "-a", "-b", "-i", str(raw), "::"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    files = {}
    for path in listing:
        name = path.removeprefix("::/").removeprefix("::")
        files[name] = subprocess.run(
            ["mcopy", "-n", "-i", str(raw), f"::{name}", "-"],
            capture_output=True,
            env=env,
            check=True,
        ).stdout
    return files


def initramfs_listing(initrd: bytes) -> list[str]:
    """`cpio -itv` of the archive: GNU cpio reads what our own newc writer produced."""
    proc = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=gzip.decompress(initrd), capture_output=True, check=True
    )
    return proc.stdout.decode().splitlines()


def test_every_appliance_is_built_with_its_cvl_xml_and_a_small_program_disk(
    built: dict[str, dict],
) -> None:
    assert sorted(built) == EVERY
    for name, row in built.items():
        directory = Path(row["dir"])
        base = name.split("-")[0]  # DNS-v2, DNS-bad and Mail-v2 are versions of DNS and Mail
        lower = base.lower()
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            ["BUILD-ID", f"{base}.cvl", f"{lower}.xml", f"{lower}.qcow2"]
        )
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(directory / f"{lower}.qcow2")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert info["format"] == "qcow2" and "backing-filename" not in info
        assert row["bytes"] < 32 * 2**20, f"{name} grew to {row['bytes']} bytes"
        domain = ET.parse(directory / f"{lower}.xml").getroot()
        assert domain.get("type") == "qemu"
        assert domain.find("features/acpi") is not None  # libvirt shutdown() needs it
        assert domain.find("devices/disk/source").get("file") == f"{lower}.qcow2"


def test_the_program_disk_boots_syslinux_and_carries_the_whole_appliance(
    built: dict[str, dict], tmp_path: Path
) -> None:
    files = fat_files(Path(built["LDAP"]["disk"]), tmp_path)
    assert {"vmlinuz", "initrd.gz", "syslinux.cfg", "ldlinux.sys", "ldlinux.c32"} <= set(files)
    assert b"APPEND initrd=/initrd.gz console=ttyS0" in files["syslinux.cfg"]
    listing = initramfs_listing(files["initrd.gz"])
    names = {line.split()[-1] if "->" not in line else line.split()[-3] for line in listing}
    for expected in (
        "init",
        "bin/busybox",
        "agent/agent",
        "agent/lib.sh",
        "agent/mapdecode.awk",
        "etc/inittab",
        "appliance/info",
        "appliance/hooks/configure",
        "appliance/templates/slapd.conf.tmpl",
        "usr/sbin/slapd",
        "usr/lib/ldap/back_mdb.so",
        "etc/ldap/schema/core.schema",
        "etc/modules.load",
        "lib64/ld-linux-x86-64.so.2",
    ):
        assert expected in names, expected
    assert any(n.endswith("libslapi-2.5.so.0") for n in names)  # found by ldd in the package
    console = next(line for line in listing if line.endswith(" dev/console"))
    assert console.startswith("crw")  # a device node, made without mknod or root
    info = next(line for line in listing if line.endswith(" appliance/info"))
    assert " root " in info or " 0 " in info
    modules = [line for line in listing if line.endswith(".ko")]
    assert any("virtio_net.ko" in line for line in modules)
    assert any("button.ko" in line for line in modules)


def test_the_firewall_carries_nftables_and_its_kernel_modules(
    built: dict[str, dict], tmp_path: Path
) -> None:
    files = fat_files(Path(built["Firewall"]["disk"]), tmp_path)
    listing = "\n".join(initramfs_listing(files["initrd.gz"]))
    for expected in (
        "usr/sbin/nft",
        "nf_tables.ko",
        "nft_nat.ko",
        "nft_masq.ko",
        "nf_conntrack.ko",
        "nft_chain_nat.ko",
    ):
        assert expected in listing, expected


def test_variants_share_the_base_and_differ_where_they_say(
    built: dict[str, dict], tmp_path: Path
) -> None:
    def appliance_info(name: str) -> str:
        files = fat_files(Path(built[name]["disk"]), tmp_path)
        archive = gzip.decompress(files["initrd.gz"])
        out = tmp_path / name
        out.mkdir()
        subprocess.run(
            ["cpio", "-id", "--quiet", "appliance/*", "etc/dns-records-path"],
            input=archive,
            cwd=out,
            check=True,
        )
        info = (out / "appliance" / "info").read_text()
        return info + (out / "etc" / "dns-records-path").read_text()

    assert appliance_info("DNS") == (
        "NAME=DNS\nVERSION=1\nDATA_FORMAT=1\nCHECK_TIMEOUT=30\n/data/dns/records\n"
    )
    assert appliance_info("DNS-v2") == (
        "NAME=DNS\nVERSION=2\nDATA_FORMAT=2\nCHECK_TIMEOUT=30\n/data/dns/zone/records.hosts\n"
    )
    assert (tmp_path / "DNS-v2" / "appliance" / "hooks" / "migrate").exists()
    assert not (tmp_path / "DNS" / "appliance" / "hooks" / "migrate").exists()
    assert "CHECK_TIMEOUT=86400" in appliance_info("DNS-bad")


def test_an_unchanged_appliance_comes_from_the_cache(
    built: dict[str, dict], tmp_path: Path
) -> None:
    start = time.monotonic()
    again = {row["appliance"]: row for row in build(tmp_path / "again")}
    assert time.monotonic() - start < 10
    for name, row in again.items():
        assert row["cached"] is True
        assert row["build"] == built[name]["build"]  # same input hash
        assert Path(row["disk"]).read_bytes() == Path(built[name]["disk"]).read_bytes()


def test_an_unknown_appliance_is_refused_naming_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BUILD), str(tmp_path), "--only", "Nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "no appliance source Nope" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_new_release_changes_little_of_the_program_disk(
    built: dict[str, dict], tmp_path: Path
) -> None:
    """DNS v2 (new version, hooks, data format) over v1: the qcow2 overlay holding only the
    changed clusters is a small fraction of the disk, because the kernel and everything the
    releases share keep their place on disk."""
    old, new = Path(built["DNS"]["disk"]), Path(built["DNS-v2"]["disk"])
    delta = tmp_path / "delta.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(new), str(delta)],
        check=True,
    )
    subprocess.run(
        ["qemu-img", "rebase", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(old), str(delta)],
        check=True,
    )
    assert delta.stat().st_size < new.stat().st_size / 10
    check = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", str(delta), str(new)]
    )
    assert check.returncode == 0, "the overlay over v1 must read exactly as v2"
