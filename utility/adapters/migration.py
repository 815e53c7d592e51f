"""Live migration of one domain between two hosts through libvirt (the adapter boundary of moves).

`LibvirtMigrator.migrate` asks the source host's libvirtd to migrate the running domain to the
target host itself (`virDomainMigrateToURI3`, `VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER`). When
the source libvirtd cannot reach the target's URI on its own (peer-to-peer needs its own
credentials for `qemu+ssh`), the utility drives the same migration with both connections
(`virDomainMigrate3`, still live: qemu streams memory straight from host to host). Flags follow
the domain: a persistent domain also gets `PERSIST_DEST | UNDEFINE_SOURCE` (the utility's own
domains are transient). The memory stream goes to the address in the target's URI
(`tcp://ADDRESS`, not the host's own name, which other hosts may not resolve). The domain keeps
its name, XML, MACs and so its addresses. If libvirt reports failure, the domain still runs on
the source (libvirt's contract; checked, and said otherwise).

Storage copy. Every host keeps a VM's disks in its own pool (`host_storage`), so given the VM
(`vm`), a migration copies its disks: first the target is made ready (`HostStorage.receive`:
the program-disk chains present there by content address, uploaded and read back where
missing; an empty qcow2 overlay over each chain top; an empty data volume of the source's
format and capacity), then libvirt copies only the top images while memory streams
(`VIR_MIGRATE_NON_SHARED_INC` with `VIR_MIGRATE_PARAM_MIGRATE_DISKS` naming every disk: qemu
mirrors each top image over NBD, `sync=top`, so the chain below is never sent). libvirt itself
refuses to pre-create targets of an incremental copy, and skips disks whose file exists, which
is why the volumes are made beforehand. Where the target's paths differ from the source's, the
domain XML for the target (`VIR_MIGRATE_PARAM_DEST_XML`) names them. After success the source's
volumes are deleted (its chain objects are left to the pool's garbage collection); after a
failure with the domain still on the source, the volumes made on the target are deleted again.

Bytes moved and the pause are libvirt's own job statistics: the completed job's `downtime`
(the target's record, handed over in the migration cookie) and `memory_processed`; the disk
copy's `disk_processed` is in the source's statistics only (the target's completed record
says 0 here, libvirt 9.0), so those are polled while the job runs and the larger count kept.

libvirt's test driver cannot migrate; the control-plane tests use a stand-in at this boundary.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import libvirt

from utility.adapters.libvirt_host import LibvirtHost
from utility.core.desired_state import Vm
from utility.errors import UtilityError


class MigrationFailed(UtilityError):
    """A live migration did not complete; says where the domain runs now."""

    http_status = 502


@dataclass(frozen=True)
class Migrated:
    """How a migration went, as libvirt reports it (None where it says nothing)."""

    mode: str
    downtime_ms: int | None = None
    bytes_copied: int | None = None
    notes: list[str] = field(default_factory=list)
    memory_bytes: int | None = None
    disk_bytes: int | None = None
    disks: list[str] = field(default_factory=list)  # the disk targets whose top images were copied
    chain_bytes: int = 0  # chain objects the target lacked, uploaded by content address first


Progress = Callable[[int, int], None]
"""Called with (bytes copied so far, bytes to copy in all: memory + disks) during a migration."""


class Migrator(Protocol):
    """Moves a running domain from one host to another, or leaves it where it was."""

    def migrate(
        self,
        source: LibvirtHost,
        target: LibvirtHost,
        domain: str,
        vm: Vm | None = None,
        progress: Progress | None = None,
    ) -> Migrated:
        """Migrate `domain` live (with the disks of `vm` when given), calling `progress(bytes
        done, bytes in all)` while it runs; MigrationFailed (domain still on `source`)
        otherwise."""
        ...


@dataclass(frozen=True)
class _SourceDisk:
    target: str
    path: str
    format: str


class LibvirtMigrator:
    """Live migration through libvirt.

    Args:
        shared_storage: the hosts see the disk files at the same paths (disks on storage they
            share): nothing is copied. False (default, the utility's per-host pools): the disks
            of the VM passed to `migrate` are copied (module docstring).
        bandwidth_mib: cap in MiB/s (0: libvirt's default, unlimited).
        poll: seconds between two looks at the running job's statistics.
    """

    def __init__(
        self, shared_storage: bool = False, bandwidth_mib: int = 0, poll: float = 0.05
    ) -> None:
        self.shared_storage = shared_storage
        self.bandwidth_mib = bandwidth_mib
        self.poll = poll

    def flags(self, persistent: bool, copy_disks: bool = False) -> int:
        """The migration flags for a domain (see the module docstring)."""
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        if persistent:
            flags |= libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        if copy_disks:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        return flags

    def migrate(
        self,
        source: LibvirtHost,
        target: LibvirtHost,
        domain: str,
        vm: Vm | None = None,
        progress: Progress | None = None,
    ) -> Migrated:
        """Migrate `domain` from `source` to `target`, copying `vm`'s disks (module docstring);
        `progress` is called from the statistics poller while the job runs."""
        try:
            dom = source.connection().lookupByName(domain)
            persistent = bool(dom.isPersistent())
        except libvirt.libvirtError as exc:
            raise MigrationFailed(
                f"{domain} on {source.name}: {exc.get_error_message()}; nothing was moved"
            ) from None
        params: dict[str, Any] = {}
        address = urlsplit(target.uri).hostname
        if address:  # the stream goes to the address the utility uses, not the host's own name
            params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{_bracketed(address)}"
        if self.bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.bandwidth_mib
        if vm is None or not vm.disks or self.shared_storage:
            return self._run(source, target, dom, domain, params, self.flags(persistent), progress)
        return self._with_disks(
            source, target, dom, vm, params, self.flags(persistent, True), progress
        )

    def _with_disks(
        self,
        source: LibvirtHost,
        target: LibvirtHost,
        dom: Any,
        vm: Vm,
        params: dict[str, Any],
        flags: int,
        progress: Progress | None = None,
    ) -> Migrated:
        """Volumes made on the target, the migration copying the top images, the source's
        volumes deleted after success or the target's after failure."""
        domain = vm.domain
        if target.domain(domain) is not None:
            raise MigrationFailed(
                f"host {target.name} already has a domain named {domain}; nothing was moved, "
                f"it still runs on {source.name}"
            )
        try:
            xml = dom.XMLDesc(0)
            disks = _source_disks(xml)
            data = {
                d.target: (disks[d.target].format, int(dom.blockInfo(disks[d.target].path)[0]))
                for d in vm.disks
                if d.role == "data"
            }
        except (libvirt.libvirtError, KeyError) as exc:
            raise MigrationFailed(
                f"{domain} on {source.name}: its disks do not match its record ({exc}); "
                "nothing was moved"
            ) from None
        uploaded = target.storage.uploads.object_bytes
        try:
            paths = target.storage.receive(vm, data)
        except UtilityError as exc:
            self._remove_made(target, vm)
            raise MigrationFailed(
                f"the disks of {domain} could not be made ready on {target.name} ({exc}); "
                f"nothing was moved, it still runs on {source.name}"
            ) from None
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = sorted(paths)
        if any(paths[t] != disks[t].path for t in paths):
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = _dest_xml(
                dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), paths
            )
        try:
            done = self._run(source, target, dom, domain, params, flags, progress)
        except MigrationFailed as exc:
            if _still_on(source, domain) and not _still_on(target, domain):
                removed = self._remove_made(target, vm)
                raise MigrationFailed(
                    f"{exc}; the volumes made for it on {target.name} were "
                    + ("removed" if removed else "NOT all removed")
                ) from None
            raise
        notes = list(done.notes)
        try:
            source.storage.release(vm, keep_data=False)
        except UtilityError as exc:
            notes.append(f"the volumes of {domain} on {source.name} were not removed: {exc}")
        return Migrated(
            done.mode,
            done.downtime_ms,
            done.bytes_copied,
            notes,
            done.memory_bytes,
            done.disk_bytes,
            sorted(paths),
            target.storage.uploads.object_bytes - uploaded,
        )

    @staticmethod
    def _remove_made(target: LibvirtHost, vm: Vm) -> bool:
        """Delete the volumes made for `vm` on `target` (only when no domain of its name runs
        there); whether that worked."""
        try:
            target.storage.release(vm, keep_data=False)
        except UtilityError:
            return False
        return True

    def _run(
        self,
        source: LibvirtHost,
        target: LibvirtHost,
        dom: Any,
        domain: str,
        params: dict[str, Any],
        flags: int,
        progress: Progress | None = None,
    ) -> Migrated:
        """Peer-to-peer, else client-driven; the job's numbers."""
        notes: list[str] = []
        with _JobWatch(dom, self.poll, progress) as watch:
            try:
                dom.migrateToURI3(target.uri, params, flags)
                mode = "peer-to-peer"
            except libvirt.libvirtError as exc:
                if not _still_on(source, domain):
                    raise self._lost(source, target, domain, exc) from None
                notes.append(f"peer-to-peer refused ({exc.get_error_message()}); client-driven")
                try:
                    dom.migrate3(
                        target.connection(), params, flags & ~libvirt.VIR_MIGRATE_PEER2PEER
                    )
                except libvirt.libvirtError as again:
                    if _still_on(source, domain):
                        raise MigrationFailed(
                            f"migration of {domain} from {source.name} to {target.name} failed "
                            f"({again.get_error_message()}); it still runs on {source.name}"
                        ) from None
                    raise self._lost(source, target, domain, again) from None
                mode = "client-driven"
        stats = _completed(target, domain)
        downtime = _number(stats, "downtime")
        memory = _larger(
            _number(stats, "memory_processed"), _number(watch.last, "memory_processed")
        )
        disk = _larger(_number(stats, "disk_processed"), _number(watch.last, "disk_processed"))
        # a completed job copied all of `disk_total` (the last poll may predate the mirror's end)
        disk = _larger(disk, _number(watch.last, "disk_total"))
        total = _number(stats, "data_processed")
        if memory is not None or disk is not None:
            total = max(total or 0, (memory or 0) + (disk or 0))
        return Migrated(mode, downtime, total, notes, memory, disk)

    @staticmethod
    def _lost(
        source: LibvirtHost, target: LibvirtHost, domain: str, exc: libvirt.libvirtError
    ) -> MigrationFailed:
        where = target.name if _still_on(target, domain) else "neither host (it stopped)"
        return MigrationFailed(
            f"migration of {domain} from {source.name} to {target.name} failed "
            f"({exc.get_error_message()}); it now runs on {where}"
        )


class _JobWatch:
    """Polls a domain's running job statistics in a thread while a migration call blocks;
    `last` is the last non-empty answer (the source's view, kept for when the target's
    completed record lacks a number)."""

    def __init__(self, dom: Any, interval: float, progress: Progress | None = None) -> None:
        self.dom = dom
        self.interval = interval
        self.progress = progress
        self.last: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="migration-stats", daemon=True)

    def __enter__(self) -> _JobWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                stats = self.dom.jobStats(0)
            except libvirt.libvirtError:
                continue
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
                self.last = dict(stats)
                if self.progress is not None:
                    self.progress(*job_progress(self.last))


def job_progress(stats: dict[str, Any]) -> tuple[int, int]:
    """(bytes done, bytes in all) of a running migration job's statistics: memory and disks
    (a disk copy's total is known from the start, memory's grows while pages are dirtied)."""
    done = (_number(stats, "memory_processed") or 0) + (_number(stats, "disk_processed") or 0)
    total = (_number(stats, "memory_total") or 0) + (_number(stats, "disk_total") or 0)
    if not total:
        done = _number(stats, "data_processed") or 0
        total = _number(stats, "data_total") or 0
    return done, max(total, done)


def _source_disks(xml: str) -> dict[str, _SourceDisk]:
    """Disk target -> its file and format, from a running domain's XML."""
    found = {}
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        driver = disk.find("driver")
        if target is None or source is None or source.get("file") is None:
            continue
        dev = target.get("dev", "")
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        found[dev] = _SourceDisk(dev, str(source.get("file")), fmt)
    return found


def _dest_xml(xml: str, paths: dict[str, str]) -> str:
    """The domain's migratable XML with each copied disk at its path on the target (the
    backing chain left for the target's libvirt to read from the new overlay)."""
    root = ET.fromstring(xml)
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        dev = target.get("dev") if target is not None else None
        if dev in paths and source is not None:
            source.set("file", paths[dev])
            for backing in disk.findall("backingStore"):
                disk.remove(backing)
    return ET.tostring(root, encoding="unicode")


def _bracketed(address: str) -> str:
    """An IPv6 literal in brackets, for a URI."""
    return f"[{address}]" if ":" in address else address


def _still_on(host: LibvirtHost, domain: str) -> bool:
    """Whether `domain` runs on `host` (False when the host does not answer)."""
    try:
        info = host.domain(domain)
    except UtilityError:
        return False
    return info is not None and info.running


def _completed(target: LibvirtHost, domain: str) -> dict[str, Any]:
    """The completed migration's statistics, where libvirt keeps them (the destination's)."""
    try:
        dom = target.connection().lookupByName(domain)
        return dict(dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
    except (libvirt.libvirtError, UtilityError):
        return {}


def _larger(a: int | None, b: int | None) -> int | None:
    """The larger of two counts of one thing, either possibly unknown."""
    return b if a is None else a if b is None else max(a, b)


def _number(stats: dict[str, Any], *keys: str) -> int | None:
    """The first of `keys` that `stats` holds, as an int."""
    for key in keys:
        if stats.get(key) is not None:
            return int(stats[key])
    return None
