"""VM disks on a host through libvirt storage pools, over the host's own libvirt connection.

Nothing here touches the host's filesystem directly, so a `qemu+ssh://` host needs only
libvirtd (and qemu-img, which its storage driver runs); the local embedded host works the same.

Layout on every host, under `POOL_ROOT` (`/var/lib/libvirt/collective`):

- `volumes/` is the dir pool `collective` (persistent, autostarted; made at `cui host add` and
  again on demand, idempotently). It holds each running VM's program overlays
  (`<domain>-<target>.qcow2`) and data disks (`<domain>-data-<target>.qcow2`).
- `objects/ab/cd/<sha256>` are program-disk chain objects, named by content address exactly as
  in the repository's store, so the backing names inside the objects (`../../ab/cd/<sha256>`,
  the only form `reposerver.qcow2` accepts) resolve on the host unchanged. libvirt volumes
  cannot contain '/', so each `objects/ab/cd` directory is a small transient dir pool of its
  own (`collective-o-abcd`), re-made whenever it is missing (libvirtd restarted).

An object is uploaded (`virStorageVolUpload`) only when the host lacks it (or holds a copy of the
wrong size, a torn upload); while it streams, the bytes are hashed and must equal the name, and
afterwards the volume is downloaded back and hashed again (the check that the host holds those
exact bytes: libvirt has no server-side hash, so this costs one extra read of each new object).
Objects already present are trusted by name and size only. Every chain is checked by our own
parser (`reposerver.disks.check_fetched_chain` / `reposerver.qcow2`) before any upload, and
overlays are made by the host's libvirtd (`virStorageVolCreateXML`) with the backing format
named, so qemu never probes a format.

A live migration to another host (`utility.adapters.migration`) first has the target
`receive` the VM: its chains made present there the same way, an empty overlay over each chain
top and an empty data volume of the source's format and capacity, into which qemu copies the
top images; the source's volumes are then `release`d without keeping data.

Data disks live in the pool while their VM runs; when it stops they are downloaded back into
the VM's directory on the utility's machine (atomically) and the volume is deleted, so the
record of a stopped VAP is the same file as before and a stopped VAP leaves no volume on any
host. Objects are a cache shared by every VM of every VAP on the host (an update's delta needs
its parents there): after a VM's volumes are released, `collect_garbage` deletes the objects no
volume of the pool needs any more (directly or as a parent of one that is needed) and that were
uploaded more than `grace` seconds ago (24 h by default, so a restart or another utility's
upload in flight finds its objects; within this process a collection never overlaps a boot on
the same host).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt

from utility.core.desired_state import Disk, Vm
from utility.errors import DiskError

if TYPE_CHECKING:
    from utility.adapters.libvirt_host import LibvirtHost

POOL_ROOT = "/var/lib/libvirt/collective"
VOLUME_POOL = "collective"
OBJECT_POOL_PREFIX = "collective-o-"
CHUNK = 1 << 20
GC_GRACE = 24 * 3600.0
"""Seconds an unneeded chain object stays on a host after its upload."""
_SHA = re.compile(r"[0-9a-f]{64}")
QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class Link:
    """One object of a program disk's chain on the utility's machine."""

    sha256: str
    path: Path
    format: str  # "qcow2" | "raw"
    size: int  # file bytes
    virtual_size: int


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_HASHES: dict[tuple[str, int, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def _content_address(path: Path) -> str:
    """The sha256 of a local image that is not in an object store (remembered per file state)."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    value = _hash_file(path)
    with _HASH_LOCK:
        _HASHES[key] = value
    return value


def _in_store(path: Path) -> bool:
    """Whether `path` is `<store>/ab/cd/<sha256>` (an object of our cache)."""
    name = path.name
    return (
        bool(_SHA.fullmatch(name))
        and path.parent.name == name[2:4]
        and (path.parent.parent.name == name[:2])
    )


def local_chain(base: Path) -> list[Link]:
    """The chain of a program disk's top image `base`, base first, checked by our own parser.

    A cached repository object brings its parents (`../../ab/cd/<sha256>` in the same store);
    a local image (an unversioned appliance) must be raw or a qcow2 without a backing file.

    Raises:
        DiskError: a missing or unsafe image, or a chain that does not follow.
    """
    from reposerver import qcow2
    from reposerver.disks import check_fetched_chain
    from reposerver.errors import IntegrityError, UnsafeImage

    if not base.is_file():
        raise DiskError(f"base image {base} does not exist")
    try:
        if _in_store(base):
            store = base.parent.parent.parent
            links: list[tuple[str, Path]] = []
            current: str | None = base.name
            while current is not None:
                if len(links) > 1000 or any(current == s for s, _ in links):
                    raise DiskError(f"{base}: backing chain loops or is too long")
                path = store / current[:2] / current[2:4] / current
                if not path.is_file():
                    raise DiskError(f"{base}: chain object {path} is missing from the cache")
                links.append((current, path))
                current = qcow2.checked_parent(path, f"object sha256:{current}")
            links.reverse()
            check_fetched_chain(links)
            return [
                Link(sha, path, "qcow2", path.stat().st_size, qcow2.read(path).size)
                for sha, path in links
            ]
        with base.open("rb") as f:
            magic = f.read(4)
        size = base.stat().st_size
        if magic != QCOW2_MAGIC:
            return [Link(_content_address(base), base, "raw", size, size)]
        header = qcow2.read(base)
        if header.backing_name is not None:
            raise DiskError(
                f"{base}: a local image with a backing file cannot be sent to a host "
                "(publish it, or flatten it with qemu-img convert)"
            )
        qcow2.check_object(header, str(base))
        return [Link(_content_address(base), base, "qcow2", size, header.size)]
    except (UnsafeImage, IntegrityError) as exc:
        raise DiskError(f"{base}: {exc}") from None


def overlay_name(vm: Vm, disk: Disk) -> str:
    """The pool volume of a disk of `vm`: `<domain>-<file name in the VM's directory>`."""
    return f"{vm.domain}-{Path(disk.path).name}"


@dataclass
class Uploads:
    """What one host received: (object, bytes) per uploaded object, in order."""

    objects: list[tuple[str, int]] = field(default_factory=list)
    data_bytes: int = 0

    @property
    def object_bytes(self) -> int:
        return sum(n for _, n in self.objects)


def _volume_xml(
    name: str, capacity: int, fmt: str, backing: tuple[str, str] | None = None, sparse: bool = True
) -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    if sparse:
        ET.SubElement(root, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", type=fmt)
    if fmt == "qcow2":
        ET.SubElement(target, "compat").text = "1.1"  # v3: dirty bitmaps (backup checkpoints)
    if backing is not None:
        store = ET.SubElement(root, "backingStore")
        ET.SubElement(store, "path").text = backing[0]
        ET.SubElement(store, "format", type=backing[1])
    return ET.tostring(root, encoding="unicode")


def _pool_xml(name: str, path: str) -> str:
    root = ET.Element("pool", type="dir")
    ET.SubElement(root, "name").text = name
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "path").text = path
    return ET.tostring(root, encoding="unicode")


def _refresh(pool: Any) -> None:
    """Let libvirt re-read a pool's directory (files changed outside it, a restarted libvirtd).
    Only a hint: libvirt refuses while another volume of the pool is being written or made
    ("asynchronous jobs running"), and what this utility made through libvirt is known anyway."""
    try:
        pool.refresh(0)
    except libvirt.libvirtError:
        pass


def _physical(vol: Any) -> int:
    """The file bytes of a volume (libvirt's `<physical>`, else its allocation)."""
    root = ET.fromstring(vol.XMLDesc(0))
    node = root.find("physical")
    if node is not None and node.text:
        return int(node.text)
    return int(vol.info()[2])


@dataclass(frozen=True)
class BackupTaken:
    """What one backup cost: seconds in all and for libvirt's copy, bytes downloaded, the disk
    bytes the job reported (its `disk_total`), and for an incremental one its checkpoint."""

    seconds: float
    copy_seconds: float
    file_bytes: int
    disk_bytes: int
    since: str | None = None  # the checkpoint an incremental backup started from


def _checkpoint_prefix(disk: Disk) -> str:
    return f"collective-{disk.target}-"


def checkpoint_name(disk: Disk, backup: str) -> str:
    """The checkpoint a backup of `disk` named `backup` (its file name) makes."""
    return _checkpoint_prefix(disk) + backup.removesuffix(".qcow2")


def _backup_xml(vm: Vm, disk: Disk, target: str, since: str | None) -> str:
    """A push-mode `<domainbackup>` of `disk` alone (incremental from checkpoint `since`),
    into a qcow2 file at `target` (the format named: nothing is probed)."""
    root = ET.Element("domainbackup", mode="push")
    if since is not None:
        ET.SubElement(root, "incremental").text = since
    disks = ET.SubElement(root, "disks")
    for other in vm.disks:
        if other.target != disk.target:
            ET.SubElement(disks, "disk", name=other.target, backup="no")
            continue
        node = ET.SubElement(disks, "disk", name=disk.target, backup="yes", type="file")
        ET.SubElement(node, "target", file=target)
        ET.SubElement(node, "driver", type="qcow2")
    return ET.tostring(root, encoding="unicode")


def _checkpoint_xml(vm: Vm, disk: Disk, name: str) -> str:
    """A `<domaincheckpoint>` named `name` tracking writes to `disk` alone (a qcow2 bitmap)."""
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = name
    disks = ET.SubElement(root, "disks")
    for other in vm.disks:
        kind = "bitmap" if other.target == disk.target else "no"
        ET.SubElement(disks, "disk", name=other.target, checkpoint=kind)
    return ET.tostring(root, encoding="unicode")


BACKUP_TIMEOUT = 3600.0


def _wait_for_job(dom: Any, timeout: float = BACKUP_TIMEOUT) -> dict[str, Any]:
    """Wait until the domain's backup job ends; its completed statistics.

    Raises:
        libvirt.libvirtError: the job failed or was cancelled (qemu's reason when it gave one).
        TimeoutError: still running after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    pause = 0.02
    while dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
        if time.monotonic() > deadline:
            raise TimeoutError(f"backup of {dom.name()} still running after {timeout:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
    stats: dict[str, Any] = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    if stats.get("type") not in (None, libvirt.VIR_DOMAIN_JOB_COMPLETED):
        reason = stats.get("errmsg") or "no reason given"
        raise libvirt.libvirtError(f"backup job of {dom.name()} did not complete: {reason}")
    return stats


class HostStorage:
    """The utility's pools on one host, through that host's `LibvirtHost` connection.

    Args:
        host: the host's libvirt wrapper (its `_call` reconnects and names the host in errors).
        root: where the pools live on the host.
    """

    def __init__(self, host: LibvirtHost, root: str = POOL_ROOT) -> None:
        self.host = host
        self.root = root.rstrip("/")
        self.uploads = Uploads()
        self.grace = GC_GRACE
        self._lock = threading.Lock()
        self._object_locks: dict[str, threading.Lock] = {}
        self._busy = threading.Condition()
        self._preparing = 0
        self._collecting = False

    # -- pools ----------------------------------------------------------------------------------

    def ensure_pool(self) -> str:
        """Make (or start) the host's volume pool `collective`; return its directory."""
        path = f"{self.root}/volumes"

        def make(c: libvirt.virConnect) -> str:
            for _ in range(3):
                try:
                    pool = c.storagePoolLookupByName(VOLUME_POOL)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                        raise
                    try:
                        pool = c.storagePoolDefineXML(_pool_xml(VOLUME_POOL, path), 0)
                        pool.build(0)
                    except libvirt.libvirtError as exc2:
                        if exc2.get_error_code() in (
                            libvirt.VIR_ERR_OPERATION_FAILED,
                            libvirt.VIR_ERR_STORAGE_POOL_BUILT,
                        ):
                            continue  # another utility defined it meanwhile: look it up again
                        raise
                    pool.setAutostart(1)
                if not pool.isActive():
                    try:
                        pool.create(0)
                    except libvirt.libvirtError:
                        if not pool.isActive():
                            raise
                found = ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
                return found
            raise libvirt.libvirtError("the storage pool kept changing while being made")

        return self.host._call(f"make storage pool {VOLUME_POOL}", make)

    def _volume_pool(self, c: libvirt.virConnect) -> Any:
        try:
            pool = c.storagePoolLookupByName(VOLUME_POOL)
            if pool.isActive():
                return pool
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
        self.ensure_pool()
        return c.storagePoolLookupByName(VOLUME_POOL)

    def _object_pool(self, c: libvirt.virConnect, sha: str) -> Any:
        name = f"{OBJECT_POOL_PREFIX}{sha[:4]}"
        path = f"{self.root}/objects/{sha[:2]}/{sha[2:4]}"
        for _ in range(3):
            try:
                pool = c.storagePoolLookupByName(name)
                if not pool.isActive():
                    pool.create(0)
                return pool
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
            try:
                return c.storagePoolCreateXML(
                    _pool_xml(name, path), libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD
                )
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_FAILED:
                    raise  # else another thread or utility made it meanwhile: look again
        raise libvirt.libvirtError(f"storage pool {name} kept changing while being made")

    # -- objects --------------------------------------------------------------------------------

    def _object_lock(self, sha: str) -> threading.Lock:
        with self._lock:
            return self._object_locks.setdefault(sha, threading.Lock())

    def ensure_object(self, link: Link) -> str:
        """The host path of `link`'s object, uploaded and verified first if the host lacks it."""
        with self._object_lock(link.sha256):
            return self.host._call(
                f"upload object sha256:{link.sha256[:12]}", lambda c: self._ensure(c, link)
            )

    def _ensure(self, c: libvirt.virConnect, link: Link) -> str:
        pool = self._object_pool(c, link.sha256)
        _refresh(pool)
        try:
            vol = pool.storageVolLookupByName(link.sha256)
            if _physical(vol) == link.size:
                return str(vol.path())
            vol.delete(0)  # a torn upload: send it again
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
        vol = pool.createXML(_volume_xml(link.sha256, link.size, "raw"), 0)
        try:
            sent = self._upload(c, vol, link.path, link.size)
            if sent != link.sha256:
                raise DiskError(
                    f"host {self.host.name}: {link.path} is not object sha256:{link.sha256} "
                    f"(its bytes hash to {sent}); the cache is damaged"
                )
            back = self._download_hash(c, vol, link.size)
            if back != link.sha256:
                raise DiskError(
                    f"host {self.host.name}: object sha256:{link.sha256} reads back as "
                    f"sha256:{back} after upload"
                )
        except BaseException:
            try:
                vol.delete(0)
            except libvirt.libvirtError:
                pass
            raise
        self.uploads.objects.append((link.sha256, link.size))
        return str(vol.path())

    def _upload(self, c: libvirt.virConnect, vol: Any, path: Path, size: int) -> str:
        """Stream the file into the volume; the sha256 of what was sent."""
        digest = hashlib.sha256()
        stream = c.newStream(0)
        try:
            vol.upload(stream, 0, size, 0)
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        sent = stream.send(bytes(view))
                        if sent < 0:
                            raise DiskError(f"host {self.host.name}: upload stream refused data")
                        view = view[sent:]
            stream.finish()
        except BaseException:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            raise
        return digest.hexdigest()

    def _download(self, c: libvirt.virConnect, vol: Any, sink: Callable[[bytes], object]) -> None:
        stream = c.newStream(0)
        try:
            vol.download(stream, 0, 0, 0)
            while True:
                chunk = stream.recv(CHUNK)
                if isinstance(chunk, int):  # -2: would block (never on a blocking stream)
                    continue
                if not chunk:
                    break
                sink(chunk)
            stream.finish()
        except BaseException:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            raise

    def _download_hash(self, c: libvirt.virConnect, vol: Any, size: int) -> str:
        digest = hashlib.sha256()
        self._download(c, vol, digest.update)
        return digest.hexdigest()

    # -- a VM's disks ---------------------------------------------------------------------------

    def prepare(self, vm: Vm) -> dict[str, str]:
        """Upload what the host lacks, make fresh program overlays, bring the data disks.

        A data disk already in the pool (a restart) is kept; else the VM directory's copy is
        uploaded; else an empty one is made at its size. Returns disk target -> host path.
        """
        with self.in_use():
            try:
                return self._prepare(vm)
            except OSError as exc:
                raise DiskError(f"{vm.path} on host {self.host.name}: {exc}") from None

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """No garbage collection on this host while the block runs (a boot preparing disks,
        an update between releasing the old VM's volumes and booting the new one)."""
        with self._busy:
            self._busy.wait_for(lambda: not self._collecting)
            self._preparing += 1
        try:
            yield
        finally:
            with self._busy:
                self._preparing -= 1
                self._busy.notify_all()

    def _prepare(self, vm: Vm) -> dict[str, str]:
        Path(vm.vm_dir).mkdir(parents=True, exist_ok=True)
        self.ensure_pool()
        paths: dict[str, str] = {}
        for disk in vm.disks:
            if disk.role == "program":
                paths[disk.target] = self._program_overlay(overlay_name(vm, disk), disk)
            else:
                paths[disk.target] = self._data_disk(overlay_name(vm, disk), disk)
        return paths

    def _program_overlay(self, name: str, disk: Disk) -> str:
        """The chain objects uploaded where missing, and a fresh overlay `name` on its top."""
        chain = local_chain(Path(disk.base))
        backing = ""
        for link in chain:
            backing = self.ensure_object(link)
        top = chain[-1]
        return self._overlay(name, backing, top.format, top.virtual_size)

    def _overlay(self, name: str, backing: str, fmt: str, capacity: int) -> str:
        def make(c: libvirt.virConnect) -> str:
            pool = self._volume_pool(c)
            self._delete_in(pool, name)
            vol = pool.createXML(_volume_xml(name, capacity, "qcow2", (backing, fmt), False), 0)
            return str(vol.path())

        return self.host._call(f"make overlay {name}", make)

    def _data_disk(self, name: str, disk: Disk) -> str:
        local = Path(disk.path)

        def bring(c: libvirt.virConnect) -> str:
            pool = self._volume_pool(c)
            _refresh(pool)
            try:
                return str(pool.storageVolLookupByName(name).path())
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
            if not local.is_file():
                vol = pool.createXML(_volume_xml(name, disk.size, "qcow2", None, False), 0)
                return str(vol.path())
            size = local.stat().st_size
            vol = pool.createXML(_volume_xml(name, size, "raw"), 0)
            try:
                self._upload(c, vol, local, size)
            except BaseException:
                try:
                    vol.delete(0)
                except libvirt.libvirtError:
                    pass
                raise
            self.uploads.data_bytes += size
            return str(vol.path())

        return self.host._call(f"bring data disk {name}", bring)

    def receive(self, vm: Vm, data_disks: Mapping[str, tuple[str, int]]) -> dict[str, str]:
        """Make the host ready to take `vm` by a storage-copying live migration; target -> path.

        Each program disk's chain is made present (uploaded by content address where missing,
        read back and hashed, as at boot) with an empty overlay over its top; each data disk
        gets an empty volume of the format and capacity in `data_disks` (target -> (format,
        bytes), the source's). qemu then copies only the top images into these volumes. A
        volume of the same name left over here (no domain uses it: the caller checked) is
        replaced.
        """
        with self.in_use():
            self.ensure_pool()
            paths: dict[str, str] = {}
            for disk in vm.disks:
                name = overlay_name(vm, disk)
                if disk.role == "program":
                    paths[disk.target] = self._program_overlay(name, disk)
                else:
                    fmt, capacity = data_disks[disk.target]
                    paths[disk.target] = self._empty(name, fmt, capacity)
            return paths

    def _empty(self, name: str, fmt: str, capacity: int) -> str:
        def make(c: libvirt.virConnect) -> str:
            pool = self._volume_pool(c)
            self._delete_in(pool, name)
            vol = pool.createXML(_volume_xml(name, capacity, fmt, None, False), 0)
            return str(vol.path())

        return self.host._call(f"make volume {name}", make)

    def release(self, vm: Vm, keep_data: bool = True) -> None:
        """After the VM stopped: data disks back into its directory (unless not `keep_data`),
        then every volume of the VM deleted from the pool."""

        def take(c: libvirt.virConnect) -> None:
            try:
                pool = c.storagePoolLookupByName(VOLUME_POOL)
                if not pool.isActive():
                    return
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                    return
                raise
            _refresh(pool)
            for disk in vm.disks:
                name = overlay_name(vm, disk)
                if disk.role == "data" and keep_data:
                    vol = self._lookup(pool, name)
                    if vol is not None:
                        self._save(c, vol, Path(disk.path))
                self._delete_in(pool, name)

        try:
            self.host._call(f"release the disks of {vm.domain}", take)
        except OSError as exc:
            raise DiskError(f"{vm.path} on host {self.host.name}: {exc}") from None

    def _save(self, c: libvirt.virConnect, vol: Any, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            with tmp.open("wb") as f:
                self._download(c, vol, f.write)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    # -- backups ------------------------------------------------------------------------------

    def backup(
        self,
        vm: Vm,
        disk: Disk,
        sink: Callable[[bytes], object],
        checkpoint: str,
        since: str | None = None,
    ) -> BackupTaken:
        """Back up data disk `disk` of the running `vm` consistently through libvirt's backup
        API (push mode): qemu copies a point-in-time image of the disk into a qcow2 file in the
        host's pool while the guest keeps running; the file is then downloaded into `sink`
        (`virStorageVolDownload`, so `qemu+ssh://` hosts work alike) and deleted.

        The backup makes checkpoint `checkpoint` (a dirty bitmap in the disk's qcow2). With
        `since`, the name of an earlier checkpoint that the domain still has, only the clusters
        written since it are copied (incremental: the file's unallocated clusters are the ones
        unchanged since that backup); without it, or when the domain lacks it (restarted,
        restored elsewhere), the backup is full. Older checkpoints of the disk are deleted
        afterwards, so one bitmap at most tracks writes.

        Raises:
            UtilityError: the domain is not running, the job failed, or the host answered an
                error (named by the host).
        """
        name = f"{overlay_name(vm, disk)}.backup"
        directory = self.ensure_pool()

        def take(c: libvirt.virConnect) -> BackupTaken:
            pool = self._volume_pool(c)
            _refresh(pool)
            self._delete_in(pool, name)  # a torn earlier backup: libvirt will not reuse it
            dom = c.lookupByName(vm.domain)
            held = {cp.getName(): cp for cp in dom.listAllCheckpoints(0)}
            base = since if since in held else None
            began = time.monotonic()
            try:
                dom.backupBegin(
                    _backup_xml(vm, disk, f"{directory}/{name}", base),
                    _checkpoint_xml(vm, disk, checkpoint),
                    0,
                )
            except libvirt.libvirtError:
                # no checkpoint possible (a qcow2 v2 disk cannot hold a bitmap): a full backup
                self._delete_in(pool, name)
                base = None
                dom.backupBegin(_backup_xml(vm, disk, f"{directory}/{name}", None), None, 0)
            try:
                stats = _wait_for_job(dom)
            except BaseException:
                try:
                    dom.abortJob()
                except libvirt.libvirtError:
                    pass
                raise
            copied = time.monotonic() - began
            for old_name, old in held.items():
                if old_name.startswith(_checkpoint_prefix(disk)):
                    old.delete(0)
            _refresh(pool)
            vol = pool.storageVolLookupByName(name)
            try:
                size = _physical(vol)
                self._download(c, vol, sink)
            finally:
                self._delete_in(pool, name)
            return BackupTaken(
                seconds=time.monotonic() - began,
                copy_seconds=copied,
                file_bytes=size,
                disk_bytes=int(stats.get("disk_total", 0) or 0),
                since=base,
            )

        return self.host._call(f"back up {name}", take)

    @staticmethod
    def _lookup(pool: Any, name: str) -> Any:
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise

    def _delete_in(self, pool: Any, name: str) -> None:
        vol = self._lookup(pool, name)
        if vol is not None:
            try:
                vol.delete(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise

    # -- garbage ------------------------------------------------------------------------------

    def collect_garbage(self, now: float | None = None) -> list[str]:
        """Delete the chain objects no volume needs that were uploaded over `grace` seconds ago;
        their names. Skipped (empty answer) while a boot prepares disks on this host."""
        with self._busy:
            if self._preparing or self._collecting:
                return []
            self._collecting = True
        try:
            return self.host._call(
                "collect unused objects", lambda c: self._sweep(c, now or time.time())
            )
        finally:
            with self._busy:
                self._collecting = False
                self._busy.notify_all()

    def _sweep(self, c: libvirt.virConnect, now: float) -> list[str]:
        def parent(vol: Any) -> tuple[str | None, float]:
            root = ET.fromstring(vol.XMLDesc(0))
            name = Path(root.findtext("backingStore/path") or "").name
            mtime = float(root.findtext("target/timestamps/mtime") or now)
            return (name if _SHA.fullmatch(name) else None), mtime

        needed: list[str] = []
        try:
            pool = c.storagePoolLookupByName(VOLUME_POOL)
            if pool.isActive():
                _refresh(pool)
                needed = [p for v in pool.listAllVolumes(0) if (p := parent(v)[0])]
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
        objects: dict[str, tuple[Any, str | None, float]] = {}
        for pool in c.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            if pool.name().startswith(OBJECT_POOL_PREFIX):
                _refresh(pool)
                for vol in pool.listAllVolumes(0):
                    if _SHA.fullmatch(vol.name()):
                        objects[vol.name()] = (vol, *parent(vol))
        keep: set[str] = set()
        while needed:
            sha = needed.pop()
            if sha in objects and sha not in keep:
                keep.add(sha)
                if objects[sha][1]:
                    needed.append(str(objects[sha][1]))
        removed = []
        for sha, (vol, _parent, mtime) in sorted(objects.items()):
            if sha not in keep and now - mtime >= self.grace:
                try:
                    vol.delete(0)
                    removed.append(sha)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                        raise
        return removed

    # -- what is there --------------------------------------------------------------------------

    def volumes(self) -> list[str]:
        """Names of the volumes in the host's volume pool (none when it does not exist)."""

        def listing(c: libvirt.virConnect) -> list[str]:
            try:
                pool = c.storagePoolLookupByName(VOLUME_POOL)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                    return []
                raise
            if not pool.isActive():
                return []
            _refresh(pool)
            return sorted(v.name() for v in pool.listAllVolumes(0))

        return self.host._call("list volumes", listing)

    def objects(self) -> list[str]:
        """Content addresses of the chain objects the host holds (in active object pools)."""

        def listing(c: libvirt.virConnect) -> list[str]:
            found = []
            for pool in c.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
                if pool.name().startswith(OBJECT_POOL_PREFIX):
                    _refresh(pool)
                    found += [v.name() for v in pool.listAllVolumes(0)]
            return sorted(n for n in found if _SHA.fullmatch(n))

        return self.host._call("list objects", listing)
