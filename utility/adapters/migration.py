"""Live migration of one domain between two hosts through libvirt (the adapter boundary of moves).

`LibvirtMigrator.migrate` asks the source host's libvirtd to migrate the running domain to the
target host itself (`virDomainMigrateToURI3`, `VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER`). When
the source libvirtd cannot reach the target's URI on its own (peer-to-peer needs its own
credentials for `qemu+ssh`), the utility drives the same migration with both connections
(`virDomainMigrate3`, still live: qemu streams memory straight from host to host). Flags follow
the domain: a persistent domain also gets `PERSIST_DEST | UNDEFINE_SOURCE` (the utility's own
domains are transient); when the hosts do not share the disks' storage, `NON_SHARED_INC`
copies each disk's top image (program overlays and data disks), the content-addressed backing
chain being present on the target already. The memory stream goes to the address in the
target's URI (`tcp://ADDRESS`, not the host's own name, which other hosts may not resolve). The
domain keeps its name, XML, MACs and so its addresses. If libvirt reports failure, the domain
still runs on the source (libvirt's contract; checked, and said otherwise).

libvirt's test driver cannot migrate; the control-plane tests use a stand-in at this boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import libvirt

from utility.adapters.libvirt_host import LibvirtHost
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


class Migrator(Protocol):
    """Moves a running domain from one host to another, or leaves it where it was."""

    def migrate(self, source: LibvirtHost, target: LibvirtHost, domain: str) -> Migrated:
        """Migrate `domain` live; MigrationFailed (domain still on `source`) otherwise."""
        ...


class LibvirtMigrator:
    """Live migration through libvirt.

    Args:
        shared_storage: the hosts see the disk files at the same paths (this project's current
            layout: disks live on the cluster manager's file system); False copies the disks'
            top images with the memory (`NON_SHARED_INC`).
        bandwidth_mib: cap in MiB/s (0: libvirt's default, unlimited).
    """

    def __init__(self, shared_storage: bool = True, bandwidth_mib: int = 0) -> None:
        self.shared_storage = shared_storage
        self.bandwidth_mib = bandwidth_mib

    def flags(self, persistent: bool) -> int:
        """The migration flags for a domain (see the module docstring)."""
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        if persistent:
            flags |= libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        if not self.shared_storage:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        return flags

    def migrate(self, source: LibvirtHost, target: LibvirtHost, domain: str) -> Migrated:
        """Migrate `domain` from `source` to `target` (module docstring)."""
        try:
            dom = source.connection().lookupByName(domain)
            persistent = bool(dom.isPersistent())
        except libvirt.libvirtError as exc:
            raise MigrationFailed(
                f"{domain} on {source.name}: {exc.get_error_message()}; nothing was moved"
            ) from None
        flags = self.flags(persistent)
        params: dict[str, object] = {}
        address = urlsplit(target.uri).hostname
        if address:  # the stream goes to the address the utility uses, not the host's own name
            params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{_bracketed(address)}"
        if self.bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.bandwidth_mib
        notes: list[str] = []
        try:
            dom.migrateToURI3(target.uri, params, flags)
            mode = "peer-to-peer"
        except libvirt.libvirtError as exc:
            if not _still_on(source, domain):
                raise self._lost(source, target, domain, exc) from None
            notes.append(f"peer-to-peer refused ({exc.get_error_message()}); client-driven")
            try:
                dom.migrate3(target.connection(), params, flags & ~libvirt.VIR_MIGRATE_PEER2PEER)
            except libvirt.libvirtError as again:
                if _still_on(source, domain):
                    raise MigrationFailed(
                        f"migration of {domain} from {source.name} to {target.name} failed "
                        f"({again.get_error_message()}); it still runs on {source.name}"
                    ) from None
                raise self._lost(source, target, domain, again) from None
            mode = "client-driven"
        return Migrated(mode, *_job_numbers(target, domain), notes=notes)

    @staticmethod
    def _lost(
        source: LibvirtHost, target: LibvirtHost, domain: str, exc: libvirt.libvirtError
    ) -> MigrationFailed:
        where = target.name if _still_on(target, domain) else "neither host (it stopped)"
        return MigrationFailed(
            f"migration of {domain} from {source.name} to {target.name} failed "
            f"({exc.get_error_message()}); it now runs on {where}"
        )


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


def _job_numbers(target: LibvirtHost, domain: str) -> tuple[int | None, int | None]:
    """(downtime in ms, bytes transferred) of the completed migration, where libvirt keeps
    them (the destination's completed-job statistics)."""
    try:
        dom = target.connection().lookupByName(domain)
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except (libvirt.libvirtError, UtilityError):
        return None, None
    downtime = stats.get("downtime")
    copied = stats.get("data_processed", stats.get("memory_processed"))
    return (
        int(downtime) if downtime is not None else None,
        int(copied) if copied is not None else None,
    )
