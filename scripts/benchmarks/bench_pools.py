"""Disks sent to a remote host through libvirt (`utility.adapters.host_storage`), on a lab host
reached as `qemu+ssh://root@…/system` (`scripts/lab`; brought up for the run and down again
when it was not up already; needs root).

The DNS appliance v1 and v2 (scripts/build-appliances) are published into a fresh repository,
so v2 is stored as a delta over v1. With v1's chain already on the host, measured:
- bytes uploaded to the host for the update (only the objects it lacks) vs the whole v2 image;
- seconds to bring the update's disk to the host (pool look-ups, upload, read-back hash check)
  vs uploading the whole v2 image the same way; median of 3, the new objects deleted between.

And the guest channel on the local host (`qemu:///system`), to decide whether the libvirt
stream a remote host needs could serve local VMs as well: the DNS VM booted from the pool,
serial port 1 a pty read through `virDomainOpenConsole` vs the Unix socket, timed from domain
creation to the first HELLO and from PARAMS to the guest's answer; median of 3 each.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bench import Row

REPO_ROOT = Path(__file__).resolve().parents[2]
REPEAT = 3
NAMES = (
    "update upload to a lab host (DNS v1->v2): bytes",
    "update upload to a lab host (DNS v1->v2): seconds",
)
CHANNEL = (
    "guest channel, local host: domain created -> HELLO",
    "guest channel, local host: PARAMS -> READY",
)


def _lab() -> tuple[object, bool]:
    """The running lab (made with one host if none is up) and whether this run made it."""
    from multihost_lab import Lab

    try:
        lab = Lab.load()
        if all(Path(f"/proc/{pid}").exists() for h in lab.hosts for pid in h.pids.values()):
            return lab, False
    except Exception:  # noqa: BLE001 - no lab or a stale one: make one
        pass
    env = {**os.environ, "COLLECTIVE_LAB_LOCKED": "1"}
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "lab"), "up", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"scripts/lab up 1: {done.stderr.strip()}")
    return Lab.load(), True


def _images(out: Path) -> dict[str, Path]:
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-appliances"), str(out), "--json",
         "--only", "DNS", "--only", "DNS-v2"],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"build-appliances: {done.stderr.strip()[-500:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["appliance"]: Path(row["dir"]) for row in rows}


def measure() -> dict[str, float]:
    sys.path.insert(0, str(REPO_ROOT))
    from multihost_lab import lab_lock

    from reposerver.publish import publish
    from reposerver.repository import Repository
    from utility.adapters.host_storage import local_chain
    from utility.adapters.libvirt_host import LibvirtHost

    with tempfile.TemporaryDirectory(prefix="bench-pools-") as tmp:
        images = _images(Path(tmp) / "images")
        repo = Repository.create(Path(tmp) / "repos" / "DNS")
        publish(repo.path, images["DNS"] / "DNS.cvl")
        publish(repo.path, images["DNS-v2"] / "DNS.cvl")
        tops = {
            v: {d["name"]: str(d["sha256"]) for d in repo.disks(v)}["dns.qcow2"] for v in (1, 2)
        }
        v1 = local_chain(repo.store.path(tops[1]))
        v2 = local_chain(repo.store.path(tops[2]))
        whole = local_chain(images["DNS-v2"] / "dns.qcow2")
        with lab_lock():
            lab, made = _lab()
            target = lab.hosts[0]  # type: ignore[attr-defined]
            host = LibvirtHost(target.name, target.uri)
            storage = host.storage
            try:
                storage.ensure_pool()
                for link in v1:
                    storage.ensure_object(link)

                def bring(links: list) -> tuple[float, int]:  # type: ignore[type-arg]
                    before = len(storage.uploads.objects)
                    started = time.perf_counter()
                    for link in links:
                        storage.ensure_object(link)
                    seconds = time.perf_counter() - started
                    sent = storage.uploads.objects[before:]
                    _forget(host, [sha for sha, _ in sent])
                    return seconds, sum(n for _, n in sent)

                delta = [bring(v2) for _ in range(REPEAT)]
                full = [bring(whole) for _ in range(REPEAT)]
                _forget(host, [link.sha256 for link in v1])
            finally:
                host.close()
                if made:
                    subprocess.run(
                        [str(REPO_ROOT / "scripts" / "lab"), "down"],
                        capture_output=True, env={**os.environ, "COLLECTIVE_LAB_LOCKED": "1"},
                        timeout=300,
                    )  # fmt: skip
    return {
        "delta_bytes": delta[0][1],
        "whole_bytes": full[0][1],
        "delta_s": statistics.median(s for s, _ in delta),
        "whole_s": statistics.median(s for s, _ in full),
    }


def _forget(host: object, shas: list[str]) -> None:
    """Delete these objects from the host's pools (so the next round uploads them again)."""
    from utility.adapters.host_storage import OBJECT_POOL_PREFIX

    conn = host.connection()  # type: ignore[attr-defined]
    for sha in shas:
        pool = conn.storagePoolLookupByName(f"{OBJECT_POOL_PREFIX}{sha[:4]}")
        pool.storageVolLookupByName(sha).delete(0)


def _channel_round(image: Path, work: Path, stream: bool) -> tuple[float, float]:
    """One boot of the DNS VM on qemu:///system: (create -> HELLO, PARAMS -> answer) seconds."""
    import secrets

    from utility.adapters import guest_channel
    from utility.adapters.libvirt_host import LibvirtHost
    from utility.core import domain_xml
    from utility.core.desired_state import Disk, Vm

    name = f"bench-ch-{secrets.token_hex(3)}"
    vm_dir = work / name
    vm = Vm(
        path="dns", type="DNS", origin=None, host="local", domain=name, memory=96 << 20,
        vcpus=1, vm_dir=str(vm_dir), guest_socket=str(vm_dir / "guest.sock"),
        disks=(Disk("vda", str(vm_dir / "vda.qcow2"), "program", base=str(image)),
               Disk("vdb", str(vm_dir / "data-vdb.qcow2"), "data", size=100 << 20)),
        interfaces=(), params=(("domain", ("bench.test",)),), sensitive=(), provides=(),
        requires=(), needs=(),
    )  # fmt: skip
    host = LibvirtHost("local", "qemu:///system")
    try:
        placed = host.storage.prepare(vm)
        vm_dir.chmod(0o711)
        xml = domain_xml.from_vm(vm, 0, "qemu", domain_xml.Placement(placed, remote=stream))
        started = time.perf_counter()
        host.create_domain(xml.to_xml())
        hello: list[float] = []
        transport = host.open_serial(name, "serial1") if stream else None
        try:
            guest_channel.deliver(
                vm.guest_socket, vm.param_map(), 300.0,
                lambda: hello.append(time.perf_counter()), transport,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - FAILED is an answer too; a timeout is not
            if "could not configure" not in str(exc):
                raise
        answered = time.perf_counter()
        return hello[0] - started, answered - hello[0]
    finally:
        host.destroy_domain(name)
        host.storage.release(vm, keep_data=False)
        host.close()


def channel() -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="bench-ch-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        image = _images(work / "images")["DNS"] / "dns.qcow2"
        found: dict[str, list[float]] = {"socket": [], "stream": []}
        for _ in range(REPEAT):
            for kind in ("socket", "stream"):
                found[kind].append(_channel_round(image, work, kind == "stream"))  # type: ignore[arg-type]
        return found


def rows(only: Callable[[str], bool]) -> Iterable[Row]:
    if any(only(n) for n in CHANNEL):
        rounds = channel()
        for index, name in enumerate(CHANNEL):
            ours = statistics.median(r[index] for r in rounds["stream"])  # type: ignore[index]
            base = statistics.median(r[index] for r in rounds["socket"])  # type: ignore[index]
            yield Row(
                name, ours, "s", baseline=base, baseline_label="Unix socket (what local VMs use)",
                note=f"ours: libvirt stream on a pty; median of {REPEAT}, alternating",
            )  # fmt: skip
    if not any(only(n) for n in NAMES):
        return
    if os.geteuid() != 0:
        raise RuntimeError("the lab needs root")
    found = measure()
    yield Row(
        NAMES[0],
        found["delta_bytes"],
        "B",
        baseline=found["whole_bytes"],
        baseline_label="the whole v2 image uploaded",
        goal="only the objects the host lacks",
    )
    yield Row(
        NAMES[1],
        found["delta_s"],
        "s",
        baseline=found["whole_s"],
        baseline_label="the whole v2 image, same path",
        note=f"median of {REPEAT}; upload + read-back sha256 over qemu+ssh",
    )
