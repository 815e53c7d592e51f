"""A VM with a program disk and a data disk migrates live between two lab hosts, disks copied.

Each lab host keeps disks in its own pool (`host_storage`), so the migrator makes the target
ready (chain by content address, empty overlay and data volume) and libvirt copies the top
images with the memory (`LibvirtMigrator`, the adapter `cui move` and `cui host drain` use).
The guest sits in its firmware (no bootable disk): the disks' contents are written before the
start and read back on the target, inside its namespace, with qemu-io. A second migration,
back onto a host whose migration ports refuse connections (a firewall rule in its network
namespace), fails: the VM still runs where it was, its volumes there are intact, and the
volumes made for it on the refusing host are gone.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab_fixture import (  # the fixtures are used by name
    Lab,
    LabHost,
    in_host,
    in_netns,
    lab_fixture,  # noqa: F401
    lab_session_fixture,  # noqa: F401
)

from utility.adapters.host_storage import overlay_name
from utility.adapters.libvirt_host import LibvirtHost
from utility.adapters.migration import LibvirtMigrator, MigrationFailed
from utility.core import domain_xml
from utility.core.desired_state import Disk, Vm

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.lab, pytest.mark.vm, pytest.mark.xdist_group("lab")]

NAME = "col-97-disks"
MiB = 1 << 20
MIGRATION_PORTS = "49152:49215"  # libvirt's migration_port_min..max (disks' NBD too)


def qemu_io(path: str, command: str, *extra: str) -> None:
    done = subprocess.run(
        ["qemu-io", *extra, "-c", command, path], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done


def make_vm(tmp: Path) -> Vm:
    base = tmp / "program.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    qemu_io(str(base), "write -P 0x11 0 1M")
    vm_dir = tmp / "vm"
    vm_dir.mkdir()
    data = vm_dir / "data-vdb.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data), "32M"], check=True)
    qemu_io(str(data), "write -P 0x22 0 2M")
    return Vm(
        path="x",
        type="Disks",
        origin=None,
        host="",
        domain=NAME,
        memory=64 * MiB,
        vcpus=1,
        vm_dir=str(vm_dir),
        guest_socket=str(vm_dir / "guest.sock"),
        disks=(
            Disk("vda", str(vm_dir / "vda.qcow2"), "program", base=str(base)),
            Disk("vdb", str(data), "data", size=32 * MiB),
        ),
        interfaces=(),
        params=(),
        sensitive=(),
        provides=(),
        requires=(),
        needs=(),
    )


def reads(host: LabHost, path: str, command: str) -> bool:
    """Whether `command` (a qemu-io read with a pattern) succeeds on `path` inside `host`
    (shared read: the running qemu holds the image)."""
    done = in_host(host, ["qemu-io", "-r", "-U", "-c", command, path])
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def running(host: LibvirtHost) -> bool:
    info = host.domain(NAME)
    return info is not None and info.running


def test_a_vm_migrates_with_its_disks_and_a_refused_one_stays(lab: Lab, tmp_path: Path) -> None:
    one = LibvirtHost(lab.hosts[0].name, lab.hosts[0].uri)
    two = LibvirtHost(lab.hosts[1].name, lab.hosts[1].uri)
    vm = make_vm(tmp_path)
    names = sorted(overlay_name(vm, d) for d in vm.disks)
    try:
        paths = one.storage.prepare(vm)
        placement = domain_xml.Placement(paths, remote=True)
        one.create_domain(domain_xml.from_vm(vm, 97, one.domain_type(), placement).to_xml())
        assert running(one)
        began = time.monotonic()
        done = LibvirtMigrator().migrate(one, two, NAME, vm)
        seconds = time.monotonic() - began
        print(
            f"lab migration with disks: {done.mode}, {seconds:.2f} s, downtime "
            f"{done.downtime_ms} ms, {done.bytes_copied} bytes (memory {done.memory_bytes}, "
            f"disks {done.disks} {done.disk_bytes}); {done.notes}",
            file=sys.stderr,
        )
        assert running(two) and one.domain(NAME) is None
        assert done.disks == ["vda", "vdb"]
        assert done.disk_bytes is not None and done.disk_bytes >= 2 * MiB, done  # the data disk
        assert done.disk_bytes < 8 * MiB  # not the program disk's chain
        assert not set(names) & set(one.storage.volumes())  # source volumes deleted
        assert set(names) <= set(two.storage.volumes())
        target = lab.hosts[1]
        assert reads(target, paths["vdb"], "read -P 0x22 0 2M")  # same path: same pool layout
        assert reads(target, paths["vda"], "read -P 0x11 0 1M")  # through the chain there

        # back onto host one, whose migration ports now refuse: the VM stays on two
        rule = ["-p", "tcp", "--dport", MIGRATION_PORTS, "-j", "REJECT"]
        netns = lab.hosts[0].netns
        added = in_netns(netns, ["iptables", "-I", "INPUT", *rule])
        assert added.returncode == 0, added.stderr
        try:
            with pytest.raises(MigrationFailed, match=f"still runs on {two.name}.*removed"):
                LibvirtMigrator().migrate(two, one, NAME, vm)
        finally:
            in_netns(netns, ["iptables", "-D", "INPUT", *rule])
        assert running(two) and one.domain(NAME) is None
        assert not set(names) & set(one.storage.volumes())  # what was made there is gone
        assert set(names) <= set(two.storage.volumes())
        assert reads(target, paths["vdb"], "read -P 0x22 0 2M")
    finally:
        for host in (one, two):
            try:
                host.destroy_domain(NAME)
                host.storage.release(vm, keep_data=False)
            except Exception:  # noqa: BLE001 - best effort; the lab's down removes it too
                pass
            host.close()
