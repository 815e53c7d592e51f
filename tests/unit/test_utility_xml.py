"""Declarative domain and network XML, compared with golden files.

Regenerate after an intended change:
`COLLECTIVE_REGENERATE_GOLDEN=1 pytest tests/unit/test_utility_xml.py`.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.publisher_xml import PublisherXmlError, parse_vm_spec
from utility.core import domain_xml
from utility.core.desired_state import Disk, Interface, Vm
from utility.core.network_xml import NetworkXml
from utility.errors import UtilityError

GOLDEN = Path(__file__).parent / "golden" / "utility"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("COLLECTIVE_REGENERATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with COLLECTIVE_REGENERATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def sample_vm() -> Vm:
    return Vm(
        path="g.f",
        type="Firewall",
        origin=None,
        host="h1",
        domain="col-7-g.f",
        memory=96 << 20,
        vcpus=2,
        vm_dir="/srv/acme/g.f",
        guest_socket="/srv/acme/g.f/guest.sock",
        disks=(
            Disk("vda", "/srv/acme/g.f/vda.qcow2", "program", base="/cache/top.qcow2"),
            Disk("hdb", "/srv/acme/g.f/data-hdb.qcow2", "data", size=100 << 20),
        ),
        interfaces=(
            Interface(
                "ethernet0", "02:00:00:00:00:01", "10.0.100.2", "255.255.255.0", "col-v100", "g"
            ),
            Interface(
                "ethernet1",
                "02:00:00:00:00:02",
                "192.0.2.10",
                "255.255.255.0",
                "col-x7",
                "<public>",
            ),
        ),
        params=(("name", ("g-f",)),),
        sensitive=(),
        provides=(),
        requires=(),
        needs=(),
        os={
            "kernel": "/cache/vmlinuz",
            "initrd": "/cache/initrd.img",
            "cmdline": "console=ttyS0 quiet",
            "machine": "pc",
            "acpi": "on",
        },
    )


def test_domain_xml_matches_golden_file() -> None:
    text = domain_xml.from_vm(sample_vm(), 7, "qemu").to_xml()
    golden("domain-firewall.xml", text)
    root = ET.fromstring(text)
    assert root.get("type") == "qemu"
    assert root.find("os/type").get("machine") == "pc"  # type: ignore[union-attr]
    assert root.find("features/acpi") is not None  # clean shutdown needs the ACPI button
    serial1 = root.find("devices/serial/target[@port='1']/..")
    assert serial1 is not None and serial1.get("type") == "unix"
    assert serial1.find("source").get("path") == "/srv/acme/g.f/guest.sock"  # type: ignore[union-attr]
    assert [d.get("bus") for d in root.findall("devices/disk/target")] == ["virtio", "ide"]


def test_network_xml_is_isolated_and_matches_golden_file() -> None:
    text = NetworkXml("col-v100", "col-v100").to_xml()
    golden("network-isolated.xml", text)
    root = ET.fromstring(text)
    assert root.find("forward") is None and root.find("ip") is None
    tagged = ET.fromstring(NetworkXml("n", "b", vlan=100).to_xml())
    assert tagged.find("vlan/tag").get("id") == "100"  # type: ignore[union-attr]


def test_bridge_names_longer_than_15_are_refused() -> None:
    with pytest.raises(UtilityError, match="15"):
        NetworkXml("x", "a-very-long-bridge")


@given(
    st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){0,3}", fullmatch=True),
    st.integers(1, 10**9),
)
def test_owner_metadata_round_trips(path: str, vap_id: int) -> None:
    xml = domain_xml.DomainXml(
        name="n",
        memory_kib=1,
        vcpus=1,
        domain_type="qemu",
        boot=domain_xml.DirectBoot(),
        owner=domain_xml.OwnerMetadata(vap_id, path),
    ).to_xml()
    assert domain_xml.owner_of(xml) == (vap_id, path)


def test_foreign_domains_have_no_owner() -> None:
    assert domain_xml.owner_of("<domain><name>test</name></domain>") is None
    assert domain_xml.owner_of("not xml") is None


def test_publisher_xml_is_read_and_bad_files_name_themselves() -> None:
    spec = parse_vm_spec(
        b"<domain><memory unit='MiB'>128</memory><vcpu>2</vcpu>"
        b"<os><type machine='pc'>hvm</type></os><features><acpi/></features>"
        b"<devices><disk><source file='sys.qcow2'/><target dev='vda'/></disk>"
        b"</devices></domain>",
        "DNS v3: dns.vmx",
    )
    assert spec.memory == 128 << 20 and spec.vcpus == 2 and spec.disks[0].source == "sys.qcow2"
    assert spec.machine == "pc" and spec.acpi
    with pytest.raises(PublisherXmlError, match="DNS v3: dns.vmx: <memory>"):
        parse_vm_spec(b"<domain/>", "DNS v3: dns.vmx")
    with pytest.raises(PublisherXmlError, match="x.vmx: not valid domain XML"):
        parse_vm_spec(b"<domain", "x.vmx")


def test_vxlan_segment_network_and_nic_carry_the_mtu_and_match_golden_files() -> None:
    """A VAN on a host with an underlay: bridge, taps and the virtio NIC (host_mtu) get 1450."""
    text = NetworkXml("col-v100", "col-v100", mtu=1450).to_xml()
    golden("network-vxlan-segment.xml", text)
    assert ET.fromstring(text).find("mtu").get("size") == "1450"  # type: ignore[union-attr]
    vm = sample_vm()
    inside = dataclasses.replace(vm.interfaces[0], mtu=1450)
    vm = dataclasses.replace(vm, interfaces=(inside, vm.interfaces[1]))
    text = domain_xml.from_vm(vm, 7, "qemu").to_xml()
    golden("domain-vxlan-nic.xml", text)
    nics = ET.fromstring(text).findall("devices/interface")
    assert [n.find("mtu") is not None for n in nics] == [True, False]
