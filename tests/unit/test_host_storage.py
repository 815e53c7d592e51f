"""What the host storage sends and asks for, checked without a host: the local chain (our own
parser decides, hostile chains are refused before any upload), the volume XML (formats always
named), and the domain XML of a VM on a remote host. Uploads over real libvirtds:
tests/integration/test_lab_disks.py and the real-VM tests on qemu:///system."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from reposerver import qcow2
from reposerver.disks import store_base, store_delta
from reposerver.objects import ObjectStore
from utility.adapters.host_storage import _volume_xml, local_chain, overlay_name
from utility.core import domain_xml
from utility.core.desired_state import Disk, Vm
from utility.errors import DiskError

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def image(path: Path, fill: int) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "4M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {fill} 0 64k", str(path)],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture
def store_chain(tmp_path: Path) -> tuple[ObjectStore, str, str]:
    store = ObjectStore(tmp_path / "objects")
    base = store_base(store, image(tmp_path / "a.qcow2", 1))
    top = store_delta(store, image(tmp_path / "b.qcow2", 2), base)
    return store, base, top


def test_a_cached_chain_is_followed_base_first_with_content_addresses(store_chain) -> None:
    store, base, top = store_chain
    links = local_chain(store.path(top))
    assert [link.sha256 for link in links] == [base, top]
    for link in links:
        assert hashlib.sha256(link.path.read_bytes()).hexdigest() == link.sha256
        assert link.format == "qcow2" and link.virtual_size == 4 << 20


def test_a_chain_with_a_missing_parent_is_refused(store_chain) -> None:
    store, base, top = store_chain
    store.path(base).unlink()
    with pytest.raises(DiskError, match="missing from the cache"):
        local_chain(store.path(top))


def test_an_object_naming_a_host_path_as_backing_is_refused(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    base = image(tmp_path / "base.qcow2", 1)
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(evil)],
        check=True,
    )
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    placed = store.path(sha)
    placed.parent.mkdir(parents=True)
    shutil.copyfile(evil, placed)
    with pytest.raises(DiskError, match="content-addressed reference"):
        local_chain(placed)


def test_a_local_image_with_a_backing_file_is_refused_a_standalone_one_hashed(
    tmp_path: Path,
) -> None:
    base = image(tmp_path / "base.qcow2", 1)
    over = tmp_path / "over.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(over)],
        check=True,
    )
    with pytest.raises(DiskError, match="backing file cannot be sent"):
        local_chain(over)
    (link,) = local_chain(base)
    assert link.sha256 == hashlib.sha256(base.read_bytes()).hexdigest()
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 4096)
    (raw_link,) = local_chain(raw)
    assert raw_link.format == "raw" and raw_link.virtual_size == 4096


def test_a_qcow2_v2_local_image_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(old), "1M"],
        check=True,
    )
    assert qcow2.read(old).version == 2
    with pytest.raises(DiskError, match="version 2 is refused"):
        local_chain(old)


def test_volume_xml_names_every_format() -> None:
    root = ET.fromstring(_volume_xml("v.qcow2", 1 << 20, "qcow2", ("/p/ab/cd/x", "qcow2"), False))
    assert root.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert root.findtext("backingStore/path") == "/p/ab/cd/x"
    assert root.find("backingStore/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert root.find("allocation") is None
    sparse = ET.fromstring(_volume_xml("o", 10, "raw"))
    assert sparse.findtext("allocation") == "0" and sparse.find("backingStore") is None


def vm() -> Vm:
    return Vm(
        path="dns", type="DNS", origin=None, host="h", domain="c-v1-dns", memory=96 << 20,
        vcpus=1, vm_dir="/srv/apps/dns", guest_socket="/srv/apps/dns/guest.sock",
        disks=(Disk("vda", "/srv/apps/dns/vda.qcow2", "program", base="/c/x"),
               Disk("vdb", "/srv/apps/dns/data-vdb.qcow2", "data", size=1 << 20)),
        interfaces=(), params=(), sensitive=(), provides=(), requires=(), needs=(),
    )  # fmt: skip


def test_a_remote_vm_has_volume_paths_a_pty_channel_and_a_console_in_libvirts_log_dir() -> None:
    placed = {"vda": "/var/lib/libvirt/collective/volumes/c-v1-dns-vda.qcow2",
              "vdb": "/var/lib/libvirt/collective/volumes/c-v1-dns-data-vdb.qcow2"}  # fmt: skip
    root = ET.fromstring(
        domain_xml.from_vm(vm(), 1, "qemu", domain_xml.Placement(placed, remote=True)).to_xml()
    )
    assert [s.get("file") for s in root.findall("devices/disk/source")] == list(placed.values())
    assert [d.get("type") for d in root.findall("devices/disk/driver")] == ["qcow2", "qcow2"]
    serials = {s.find("target").get("port"): s for s in root.findall("devices/serial")}  # type: ignore[union-attr]
    assert serials["1"].get("type") == "pty" and serials["1"].find("source") is None
    assert serials["0"].find("source").get("path") == "/var/log/libvirt/qemu/c-v1-dns.console"  # type: ignore[union-attr]
    assert "/srv/apps" not in ET.tostring(root, encoding="unicode")  # nothing of ours leaks


def test_a_local_vm_keeps_its_socket_and_console_file() -> None:
    root = ET.fromstring(domain_xml.from_vm(vm(), 1, "qemu").to_xml())
    kinds = [s.get("type") for s in root.findall("devices/serial")]
    assert kinds == ["file", "unix"]
    assert overlay_name(vm(), vm().disks[1]) == "c-v1-dns-data-vdb.qcow2"


def test_a_local_vm_on_the_stream_channel_keeps_its_console_file() -> None:
    placement = domain_xml.Placement(pty_channel=True)
    root = ET.fromstring(domain_xml.from_vm(vm(), 1, "qemu", placement).to_xml())
    serials = root.findall("devices/serial")
    assert [s.get("type") for s in serials] == ["file", "pty"]
    assert serials[0].find("source").get("path") == "/srv/apps/dns/console.log"  # type: ignore[union-attr]
