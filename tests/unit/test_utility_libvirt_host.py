"""The libvirt wrapper on the test driver: probes, domains, networks, reconnects, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from utility.adapters.libvirt_host import HostPool, LibvirtHost
from utility.adapters.simulation import simulated_host_uri
from utility.core.network_xml import NetworkXml
from utility.errors import HostUnreachable, UtilityError

DOMAIN = (
    "<domain type='qemu'><name>{}</name><memory unit='MiB'>16</memory>"
    "<os><type>hvm</type></os></domain>"
)


def test_probes_on_a_test_host(tmp_path: Path) -> None:
    host = LibvirtHost("h", simulated_host_uri(tmp_path, "h", memory_mib=3072))
    assert host.is_test and host.domain_type() == "qemu" and not host.supports_vlan()
    assert host.memory() == 3072 << 20
    host.close()


def test_domains_and_networks_are_idempotent_and_tolerate_absence(tmp_path: Path) -> None:
    host = LibvirtHost("h", simulated_host_uri(tmp_path, "h"))
    host.create_domain(DOMAIN.format("a"))
    assert [d.name for d in host.domains()] == ["a"] and host.domain("a").running  # type: ignore[union-attr]
    assert host.shutdown_domain("a", timeout=5) in ("clean", "forced")
    assert host.domain("a") is None and host.destroy_domain("a") is False
    assert host.shutdown_domain("a", timeout=1) == "absent"
    xml = NetworkXml("col-v7", "col-v7").to_xml()
    assert host.ensure_network("col-v7", xml) is True
    assert host.ensure_network("col-v7", xml) is False
    assert host.networks() == ["col-v7"]
    assert host.remove_network("col-v7") is True and host.remove_network("col-v7") is False
    with pytest.raises(UtilityError, match="host h: start domain"):
        host.create_domain("<domain><name>broken</name></domain>")
    host.close()


def test_a_dropped_connection_is_reopened(tmp_path: Path) -> None:
    host = LibvirtHost("h", simulated_host_uri(tmp_path, "h"))
    first = host.connection()
    first.close()  # e.g. libvirtd restarted
    assert host.domains() == []
    assert host.connection() is not first
    host.close()


def test_unreachable_hosts_name_themselves(tmp_path: Path) -> None:
    host = LibvirtHost("far", "qemu+ssh://nobody@host.invalid/system?no_tty=1&no_verify=1")
    with pytest.raises(HostUnreachable, match="host far: cannot connect to qemu"):
        host.connection()


def test_pool_keeps_one_connection_per_host_and_replaces_on_uri_change(tmp_path: Path) -> None:
    pool = HostPool()
    a = pool.get("h", simulated_host_uri(tmp_path, "h"))
    assert pool.get("h", a.uri) is a
    b = pool.get("h", simulated_host_uri(tmp_path, "h2"))
    assert b is not a and b.uri.endswith("h2.xml")
    pool.close()
