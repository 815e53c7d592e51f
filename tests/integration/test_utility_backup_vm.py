"""Backups of a real VM's data disk through libvirt (`qemu:///system`): the DNS appliance runs,
its agent has made an ext2 filesystem with the record file on its data disk, and the utility
backs the disk up while the guest runs. The backup is a standalone qcow2 (read by qemu-img
naming `-f qcow2`) holding that filesystem; generations beyond `keep` are pruned; the restore
path of a failed host puts the latest backup in place and says which one and how old.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real_vms import dns_cvl, system_qemu, vm_workdir
from utility.adapters import backups
from utility.adapters.executor import Timeouts
from utility.adapters.libvirt_host import start_event_loop
from utility.adapters.restore import restore_data_disks
from utility.service.desired import Settings
from utility.service.manager import Caller, ClusterManager

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.vm

ADMIN = Caller("root", "admin")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Short and world-traversable: qemu must reach disks and the guest socket path."""
    with vm_workdir("cb") as path:
        yield path


def _hmp_write(dom: object, offset: int) -> None:
    """Write 64 KiB of 0x5a into the running VM's data disk through qemu's HMP `qemu-io`."""
    import libvirt_qemu

    xml = ET.fromstring(dom.XMLDesc(0))  # type: ignore[attr-defined]
    alias = next(
        d.find("alias").get("name")  # type: ignore[union-attr]
        for d in xml.iter("disk")
        if d.find("target").get("dev") == "vdb"  # type: ignore[union-attr]
    )
    said = libvirt_qemu.qemuMonitorCommand(
        dom,
        f'qemu-io -d /machine/peripheral/{alias}/virtio-backend "write -P 0x5a {offset} 64k"',
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
    )
    assert said.strip() == "", said


def _raw(backup: Path, out: Path) -> bytes:
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(backup), str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def test_a_running_vms_data_disk_is_backed_up_pruned_and_restored(workdir: Path) -> None:
    system_qemu().close()
    cvl = dns_cvl(workdir)
    assert start_event_loop()
    prefix = "b" + secrets.token_hex(2)
    manager = ClusterManager(
        workdir / "state", Settings(prefix=prefix), Timeouts(ready=240, stop=30), backup_keep=3
    )
    conn = libvirt.open("qemu:///system")
    try:
        manager.add_host(ADMIN, "real", "qemu:///system", 1 << 30, 2)
        manager.add_vlans(ADMIN, "3104-3105")
        manager.add_public_ips(ADMIN, "198.51.100.214-198.51.100.215")
        started = manager.start(ADMIN, str(cvl))
        component = started["components"][0]
        assert component["state"] == "running"
        status = manager.status(ADMIN, str(cvl))[0]
        assert status["components"][0]["backups"] == {}  # none yet
        vap = manager.store.vaps(("running",))[0]
        assert vap.state is not None
        vm = vap.state.vms[0]
        data = next(d for d in vm.disks if d.role == "data")
        assert not Path(data.path).exists()  # the data disk lives in the host's pool meanwhile

        lines = manager.backups.back_up(vap.id, "test")
        assert len(lines) == 1 and "backup 2" in lines[0], lines
        first = backups.latest(data)
        assert first is not None
        raw = _raw(first[1], workdir / "first.raw")
        assert b"collective-data" in raw  # the ext2 label the guest's agent wrote
        assert b".collective" in raw and b"records" in raw
        info = subprocess.run(
            ["qemu-img", "info", "-f", "qcow2", "--output=json", str(first[1])],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert '"backing-filename"' not in info

        # a write into the running disk (its last 64 KiB: free ext2 blocks), as the guest would
        size = json.loads(info)["virtual-size"]
        _hmp_write(conn.lookupByName(vm.domain), size - (64 << 10))
        second = manager.backups.back_up(vap.id, "test")[0]
        assert "(test, incremental)" in second, second
        wire = int(second.split("): ")[1].split(" bytes")[0])
        assert wire < first[1].stat().st_size // 4  # only the changed clusters crossed
        inc = backups.latest(data)
        assert inc is not None and inc[1] != first[1]
        assert b"collective-data" in _raw(inc[1], workdir / "inc.raw")  # folded onto the first
        read = subprocess.run(
            ["qemu-io", "-f", "qcow2", "-r", "-c", f"read -P 0x5a {size - (64 << 10)} 64k",
             str(inc[1])],
            capture_output=True, text=True,
        )  # fmt: skip
        assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read
        for _ in range(2):
            time.sleep(0.01)
            assert "incremental" in manager.backups.back_up(vap.id, "test")[0]
        names = sorted(p.name for p in backups.backup_dir(data).iterdir())
        assert len(names) == 3 and first[1].name not in names  # the oldest pruned
        newest = backups.latest(data)
        assert newest is not None and newest[1].name == names[-1]

        shown = manager.status(ADMIN, str(cvl))[0]["components"][0]["backups"]
        assert shown == {data.target: newest[0].taken}
        kinds = [e["kind"] for e in manager.store.events(vap.id)]
        assert kinds.count("backup") == 4
        pool = conn.storagePoolLookupByName("collective")
        pool.refresh(0)
        assert not [v for v in pool.listVolumes() if v.endswith(".backup")]

        # the failed-host restore path: the latest backup becomes the disk's file
        said = restore_data_disks(vm, time.time())
        assert f"{data.target}: backup {newest[1].name}" in said and "s old" in said
        assert Path(data.path).read_bytes() == newest[1].read_bytes()
        assert manager.stop(ADMIN, str(cvl))["problems"] == []
    finally:
        manager.close()
        for item in [*conn.listAllDomains(), *conn.listAllNetworks()]:
            if item.name().startswith(prefix):
                try:
                    item.destroy()
                except libvirt.libvirtError:
                    pass
        conn.close()
