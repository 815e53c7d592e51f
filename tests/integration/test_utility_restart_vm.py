"""A real VM that dies is seen and restarted: the DNS appliance on `qemu:///system` is killed
with `virsh destroy`; libvirt's lifecycle event wakes the watchdog (its interval is an hour, so
only the event can), which marks it crashed and boots it again until the guest is READY.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real_vms import dns_cvl, system_qemu, vm_workdir
from utility.adapters.executor import Timeouts
from utility.adapters.libvirt_host import start_event_loop
from utility.service.desired import Settings
from utility.service.manager import Caller, ClusterManager

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.vm

ADMIN = Caller("root", "admin")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Short and world-traversable: qemu must reach disks and the guest socket path."""
    with vm_workdir("cr") as path:
        yield path


def test_a_real_vm_destroyed_with_virsh_is_restarted(workdir: Path) -> None:
    system_qemu().close()
    cvl = dns_cvl(workdir)
    assert start_event_loop()
    prefix = "r" + secrets.token_hex(2)
    manager = ClusterManager(
        workdir / "state", Settings(prefix=prefix), Timeouts(ready=240, stop=30)
    )
    stopping = threading.Event()
    watchdog = threading.Thread(
        target=manager.watchdog.run_forever, args=(3600.0, stopping), daemon=True
    )
    conn = libvirt.open("qemu:///system")
    try:
        manager.add_host(ADMIN, "real", "qemu:///system", 1 << 30, 2)
        manager.add_vlans(ADMIN, "3102-3103")
        manager.add_public_ips(ADMIN, "198.51.100.212-198.51.100.213")
        first = manager.start(ADMIN, str(cvl))["components"][0]
        assert first["state"] == "running"
        watchdog.start()
        began = time.monotonic()
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "destroy", first["domain"]],
            check=True,
            capture_output=True,
        )
        deadline = began + 300
        while time.monotonic() < deadline:  # a change that must come; then checked below
            now = manager.status(ADMIN, str(cvl))[0]["components"][0]
            if now["restarts"] == 1 and now["state"] == "running":
                break
            time.sleep(0.5)
        took = time.monotonic() - began
        assert now["state"] == "running" and now["restarts"] == 1, now
        assert now["boot_seq"] > first["boot_seq"]
        assert now["interfaces"] == first["interfaces"]
        assert conn.lookupByName(first["domain"]).isActive()
        kinds = [e["kind"] for e in manager.store.events(manager.status(ADMIN, str(cvl))[0]["id"])]
        assert "crashed" in kinds and "restart" in kinds
        print(f"restarted and READY {took:.1f} s after virsh destroy")
        assert manager.stop(ADMIN, str(cvl))["problems"] == []
    finally:
        stopping.set()
        manager.watchdog.wake.set()
        manager.close()
        for item in [*conn.listAllDomains(), *conn.listAllNetworks()]:
            if item.name().startswith(prefix):
                try:
                    item.destroy()
                except libvirt.libvirtError:
                    pass
        conn.close()
