"""A running domain's CPU weight is set live through the real libvirtd (qemu:///system), as the
executor does for VMs held in overlapped boots; where it cannot be set the call says so."""

from __future__ import annotations

import os

import pytest

libvirt = pytest.importorskip("libvirt")

from utility.adapters.libvirt_host import LibvirtHost  # noqa: E402

pytestmark = pytest.mark.vm


def test_the_weight_of_a_running_domain_changes_live_and_a_missing_one_is_false() -> None:
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:  # pragma: no cover - only where libvirtd is missing
        pytest.skip(f"qemu:///system is not usable here: {exc}")
    name = f"col-weight-{os.getpid()}"
    xml = (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>"
    )
    host = LibvirtHost("local", "qemu:///system")
    try:
        host.create_domain(xml)
        before = conn.lookupByName(name).schedulerParameters()["cpu_shares"]
        assert before == 1024
        assert host.set_cpu_weight(name, 64) is True
        assert conn.lookupByName(name).schedulerParameters()["cpu_shares"] == 64
        assert host.set_cpu_weight(name, 1024) is True
        assert conn.lookupByName(name).schedulerParameters()["cpu_shares"] == 1024
    finally:
        host.destroy_domain(name)
        host.close()
        conn.close()
    assert host.set_cpu_weight(name, 64) is False  # gone: a hint, never an error
