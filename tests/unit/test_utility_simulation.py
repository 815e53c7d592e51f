"""A persistent simulated host keeps its domains and networks across connections (daemons)."""

from __future__ import annotations

from pathlib import Path

from utility.adapters.libvirt_host import LibvirtHost
from utility.adapters.simulation import publisher_domain_xml, simulated_host_uri

NETWORK = "<network><name>n1</name><bridge name='simbr1'/></network>"


def test_a_persistent_simulated_host_outlives_its_connection(tmp_path: Path) -> None:
    uri = simulated_host_uri(tmp_path, "h1", persistent=True)
    first = LibvirtHost("h1", uri)
    first.create_domain(publisher_domain_xml("kept", 64, disk=None))
    first.create_domain(publisher_domain_xml("dropped", 64, disk=None))
    assert first.ensure_network("n1", NETWORK)
    uuid = first.connection().lookupByName("kept").UUIDString()
    first.destroy_domain("dropped")
    first.close()  # like a daemon that died

    second = LibvirtHost("h1", uri)
    assert [(d.name, d.running) for d in second.domains()] == [("kept", True)]
    assert second.connection().lookupByName("kept").UUIDString() == uuid  # the same domain
    assert second.networks() == ["n1"]
    assert not second.ensure_network("n1", NETWORK)  # already up: left alone
    assert second.destroy_domain("kept") and second.remove_network("n1")
    second.close()

    third = LibvirtHost("h1", uri)
    assert third.domains() == [] and third.networks() == []
    third.close()


def test_an_ordinary_simulated_host_forgets_with_its_connection(tmp_path: Path) -> None:
    uri = simulated_host_uri(tmp_path, "h2")
    first = LibvirtHost("h2", uri)
    first.create_domain(publisher_domain_xml("gone", 64, disk=None))
    first.close()
    again = LibvirtHost("h2", uri)
    assert again.domains() == []
    again.close()
    assert not list(tmp_path.glob("*.base.xml"))
