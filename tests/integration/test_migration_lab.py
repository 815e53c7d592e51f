"""A real live migration of a plain VM between two lab hosts (`scripts/lab`) over qemu+ssh.

The VM has no disk (the hosts share no storage yet): a TCG guest sitting in its firmware,
migrated live by `LibvirtMigrator`, the adapter `cui move` and `cui host drain` use. A second
migration onto a host where a domain of that name already runs must fail and leave the VM
running where it was.
"""

from __future__ import annotations

import sys
import time

import pytest
from lab_fixture import (  # the fixtures are used by name
    Lab,
    lab_fixture,  # noqa: F401
    lab_session_fixture,  # noqa: F401
)

from utility.adapters.libvirt_host import LibvirtHost
from utility.adapters.migration import LibvirtMigrator, MigrationFailed

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.lab, pytest.mark.vm, pytest.mark.xdist_group("lab")]

NAME = "col-98-plain"
MAC = "52:54:00:98:00:01"


def plain_vm(name: str = NAME) -> str:
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>
<devices><interface type='ethernet'><mac address='{MAC}'/><model type='e1000'/></interface>
</devices></domain>"""


def running(host: LibvirtHost, name: str = NAME) -> bool:
    info = host.domain(name)
    return info is not None and info.running


def test_a_plain_vm_migrates_live_between_lab_hosts_and_a_failed_one_stays(lab: Lab) -> None:
    one = LibvirtHost(lab.hosts[0].name, lab.hosts[0].uri)
    two = LibvirtHost(lab.hosts[1].name, lab.hosts[1].uri)
    try:
        one.create_domain(plain_vm())
        assert running(one)
        began = time.monotonic()
        done = LibvirtMigrator().migrate(one, two, NAME)
        seconds = time.monotonic() - began
        assert running(two) and one.domain(NAME) is None
        info = two.domain(NAME)
        assert info is not None and MAC in info.xml  # same MAC on the target
        # the source's libvirtd reached the target's itself (the lab's hosts share its ssh key
        # and known_hosts), not through the client-driven fallback
        assert done.mode == "peer-to-peer", done.notes
        print(
            f"lab migration: {done.mode}, {seconds:.2f} s, downtime {done.downtime_ms} ms, "
            f"{done.bytes_copied} bytes; {done.notes}",
            file=sys.stderr,
        )

        one.create_domain(plain_vm())  # a namesake on host one: moving back must fail
        with pytest.raises(MigrationFailed, match=f"still runs on {two.name}"):
            LibvirtMigrator().migrate(two, one, NAME)
        assert running(two)
    finally:
        for host in (one, two):
            try:
                host.destroy_domain(NAME)
            except Exception:  # noqa: BLE001 - best effort; the lab's down removes it too
                pass
            host.close()
