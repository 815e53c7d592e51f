"""One real VM through the whole utility on `qemu:///system`: the DNS appliance image (built
from Debian packages by `scripts/build-appliances`) boots under TCG, receives its complete
parameter set over serial port 1 (the guest channel), signals READY, and stops cleanly.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real_vms import dns_cvl, system_qemu, vm_workdir
from utility.adapters.executor import Timeouts
from utility.service.desired import Settings
from utility.service.manager import Caller, ClusterManager

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.vm

ADMIN = Caller("root", "admin")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Short and world-traversable: qemu must reach disks and the guest socket path."""
    with vm_workdir("cu") as path:
        yield path


def test_dns_appliance_boots_gets_its_parameters_and_stops_cleanly(workdir: Path) -> None:
    system_qemu().close()
    cvl = dns_cvl(workdir)
    prefix = "g" + secrets.token_hex(2)
    manager = ClusterManager(
        workdir / "state", Settings(prefix=prefix), Timeouts(ready=240, stop=60)
    )
    conn = libvirt.open("qemu:///system")
    try:
        manager.add_host(ADMIN, "real", "qemu:///system", 1 << 30, 2)
        manager.add_vlans(ADMIN, "3100-3101")
        manager.add_public_ips(ADMIN, "198.51.100.210-198.51.100.211")
        result = manager.start(ADMIN, str(cvl))
        vm = result["components"][0]
        assert result["status"] == "running" and vm["state"] == "running"
        assert vm["domain"] in [d.name() for d in conn.listAllDomains()]
        vm_dir = workdir / "state" / "vaps" / str(result["id"]) / "root"  # the utility's storage
        assert not (cvl.parent / "root").exists()  # nothing next to the user's file
        console = (vm_dir / "console.log").read_text(errors="replace")
        assert "collective-agent" in console, console[-2000:]
        assert "198.51.100.210" in json.dumps(vm["params"]["dnshosts"]).replace("%2E", ".")
        stopped = manager.stop(ADMIN, str(cvl))
        assert stopped["problems"] == []
        assert [d.name() for d in conn.listAllDomains() if d.name().startswith(prefix)] == []
        assert (vm_dir / "data-vdb.qcow2").is_file()  # taken back from the pool
        pool = conn.storagePoolLookupByName("collective")  # the disks were volumes there
        pool.refresh(0)
        assert [v for v in pool.listVolumes() if v.startswith(prefix)] == []
    finally:
        manager.close()
        for item in [*conn.listAllDomains(), *conn.listAllNetworks()]:
            if item.name().startswith(prefix):
                try:
                    item.destroy()
                except libvirt.libvirtError:
                    pass
        conn.close()
