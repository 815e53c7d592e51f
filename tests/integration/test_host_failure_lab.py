"""Failure detection and fencing against a real lab host (`scripts/lab`) reached over qemu+ssh.

The host's libvirtd is frozen (SIGSTOP: it stops answering, as a hung or partitioned host
does, while its qemu processes run on) and later thawed. The utility's failure detector must
call the host suspect, then failed after the grace period, and fence it when it answers again:
a domain the records place on another host is destroyed there before the host is `up`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from lab_fixture import (  # the fixtures are used by name
    Lab,
    lab_fixture,  # noqa: F401
    lab_session_fixture,  # noqa: F401
)

from utility.adapters.libvirt_host import start_event_loop
from utility.service.manager import ClusterManager

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.lab, pytest.mark.vm, pytest.mark.xdist_group("lab")]

STALE = "col-99-stale"
PLAIN_VM = f"""<domain type='qemu'><name>{STALE}</name><memory unit='MiB'>32</memory>
<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices/></domain>"""


def _rounds_until(manager: ClusterManager, host: str, health: str, limit: float) -> float:
    """Run watchdog rounds until `host` has `health`; the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        manager.check()
        if manager.store.host_health()[host].health == health:
            return time.monotonic() - began
        time.sleep(0.5)
    got = manager.store.host_health()[host].health
    raise AssertionError(f"{host} is {got}, not {health}, after {limit} s")


def test_a_frozen_libvirtd_makes_its_host_failed_and_it_is_fenced_on_return(
    lab: Lab, tmp_path: Path
) -> None:
    start_event_loop()
    one, two = lab.hosts[0], lab.hosts[1]
    manager = ClusterManager(tmp_path / "state", host_grace=4.0)
    frozen = False
    try:
        for h in (one, two):
            manager.hosts_service.add(h.name, h.uri, 1 << 30, 4)
        store = manager.store
        with store.transaction() as db:  # the records: the VM now runs on host one
            vap_id = store.new_vap(db, "/lab/x.cvl", "admin")
            db.execute(
                "INSERT INTO vms (vap_id, path, host, domain, memory, state) "
                "VALUES (?, 'x', ?, ?, ?, 'running')",
                (vap_id, one.name, STALE, 32 << 20),
            )
        store.set_vap(vap_id, status="running")
        manager.host(two.name).create_domain(PLAIN_VM)  # ... and a stale twin on host two
        assert manager.check().get("failed") is None
        assert {h.health for h in store.host_health().values()} == {"up"}

        os.kill(two.pids["libvirtd"], signal.SIGSTOP)
        frozen = True
        stopped = time.monotonic()
        _rounds_until(manager, two.name, "suspect", 30)
        _rounds_until(manager, two.name, "failed", 60)
        detected = time.monotonic() - stopped
        assert detected >= 4.0
        assert store.host_health()[one.name].health == "up"

        os.kill(two.pids["libvirtd"], signal.SIGCONT)
        frozen = False
        thawed = time.monotonic()
        _rounds_until(manager, two.name, "up", 90)
        fenced = time.monotonic() - thawed
        assert manager.host(two.name).domain(STALE) is None  # destroyed before it takes VMs
        events = [str(e["text"]) for e in store.events()]
        assert f"host {two.name}: suspect -> failed" in events
        assert any(f"host {two.name} fenced: destroyed {STALE}" in t for t in events)
        print(
            f"lab: frozen libvirtd failed after {detected:.1f} s (grace 4 s); "
            f"fenced and up {fenced:.1f} s after it answered again",
            file=sys.stderr,
        )
    finally:
        if frozen:
            os.kill(two.pids["libvirtd"], signal.SIGCONT)
        try:
            manager.host(two.name).destroy_domain(STALE)
        except Exception:  # noqa: BLE001 - best effort clean-up; the lab's down removes it too
            pass
        manager.close()
