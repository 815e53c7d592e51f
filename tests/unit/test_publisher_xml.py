"""One reader of the publisher's domain XML: the repository and the utility see the same disks.

Before, the repository skipped non-`disk` devices and the utility did not, so an appliance with
a cdrom was published fine and failed at start. Now both read through `common.publisher_xml`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.publisher_xml import PublisherXmlError, parse_vm_spec
from reposerver import domain_xml as repository_side
from reposerver.errors import InvalidAppliance
from tests.conftest import REPO_ROOT
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.service.manager import Caller, ClusterManager

ADMIN = Caller("root", "admin")
CDROM = (
    b"<disk type='file' device='cdrom'><source file='install.iso'/>"
    b"<target dev='hdc' bus='ide'/><readonly/></disk>"
)


def domain(devices: bytes) -> bytes:
    return (
        b"<domain type='qemu'><name>dns</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        b"<os><type arch='x86_64'>hvm</type></os><devices>" + devices + b"</devices></domain>"
    )


SYSTEM = b"<disk type='file' device='disk'><source file='system.qcow2'/><target dev='vda'/></disk>"


def utility_disks(xml: bytes) -> list[tuple[str, str]]:
    return [(d.target, d.source) for d in parse_vm_spec(xml, "dns.vmx").disks]


def repository_disks(xml: bytes) -> list[tuple[str, str]]:
    return [(d.target, d.source) for d in repository_side.disks(xml, "dns.vmx")]


def test_a_cdrom_is_skipped_by_the_repository_and_the_utility_alike() -> None:
    xml = domain(SYSTEM + CDROM)
    assert utility_disks(xml) == repository_disks(xml) == [("vda", "system.qcow2")]


def test_a_broken_disk_is_refused_by_both_with_the_same_message() -> None:
    xml = domain(
        b"<disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vda'/></disk>"
    )
    with pytest.raises(PublisherXmlError) as utility_error:
        parse_vm_spec(xml, "dns.vmx")
    with pytest.raises(InvalidAppliance) as repository_error:
        repository_side.disks(xml, "dns.vmx")
    assert str(utility_error.value) == str(repository_error.value)
    assert "dns.vmx: disk vda must be type='file'" in str(utility_error.value)


DEVICE_KINDS = st.sampled_from(["disk", "cdrom", "floppy", "lun", None])
DISK_TYPES = st.sampled_from(["file", "block", None])


@st.composite
def device_lists(draw: st.DrawFn) -> bytes:
    parts = []
    for n in range(draw(st.integers(0, 4))):
        kind, kind_type = draw(DEVICE_KINDS), draw(DISK_TYPES)
        attrs = (f" device='{kind}'" if kind else "") + (
            f" type='{kind_type}'" if kind_type else ""
        )
        source = f"<source file='d{n}.qcow2'/>" if draw(st.booleans()) else ""
        target = f"<target dev='vd{'abcd'[n]}'/>" if draw(st.booleans()) else ""
        parts.append(f"<disk{attrs}>{source}{target}</disk>".encode())
    return b"".join(parts)


@settings(max_examples=200, deadline=None)
@given(device_lists())
def test_both_sides_agree_on_any_device_list(devices: bytes) -> None:
    """Same disks, or both refuse with the same message."""
    xml = domain(devices)
    try:
        expected: object = utility_disks(xml)
    except PublisherXmlError as exc:
        expected = str(exc)
    try:
        got: object = repository_disks(xml)
    except InvalidAppliance as exc:
        got = str(exc)
    assert got == expected


def test_an_appliance_with_a_cdrom_starts(tmp_path: Path) -> None:
    """The start side of the old disagreement: the cdrom's file is not there, and need not be."""
    cvl = paper_tree(REPO_ROOT / "examples" / "paper", tmp_path / "acme")
    vmx = cvl.parent / "DNS" / "dns.vmx"
    vmx.write_bytes(vmx.read_bytes().replace(b"</devices>", CDROM + b"</devices>"))
    assert not (cvl.parent / "DNS" / "install.iso").exists()
    manager = ClusterManager(tmp_path / "state", default_uri="test:///default")
    try:
        uri = simulated_host_uri(tmp_path, f"cd-{tmp_path.name}")
        manager.add_host(ADMIN, "h1", uri, 2048 << 20, 8)
        manager.add_vlans(ADMIN, "100-110")
        manager.add_public_ips(ADMIN, "192.0.2.10-192.0.2.12")
        started = manager.start(ADMIN, str(cvl))
        assert {c["state"] for c in started["components"]} == {"running"}
        manager.stop(ADMIN, str(cvl))
    finally:
        manager.close()
