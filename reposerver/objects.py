"""The content-addressed object store: disk images kept by sha256 in the Git LFS layout.

An object with id `abcd…` lives at `lfs/objects/ab/cd/abcd…` inside the bare repository (the
layout git-lfs itself uses), read-only. Writes stream into `lfs/objects/.incoming/`, are hashed
and checked against the expected id and size, then renamed into place, so a reader never sees a
partial object. Reads verify the hash too; because objects are immutable files, a successful
verification is remembered per process for the file's (inode, size, mtime, ctime) so serving a
256 MiB object repeatedly does not re-hash it on every request.

Uploads through the Git LFS API do not go straight into the store: they land, verified, in
the staging area `lfs/incoming/` (same layout, same filesystem), which downloads never read.
The push checks read through a `StagedView` of both; only a push that is accepted promotes the
staged objects its versions reference (`ObjectStore.promote`, an atomic rename under the
repository lock), so a refused push leaves the store unchanged and nothing downloadable.
Staged objects no push claimed are pruned after a TTL (`ObjectStore.prune`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from reposerver.errors import IntegrityError, NotFound, PayloadTooLarge
from reposerver.names import object_id

CHUNK = 1 << 20
INCOMING = ".incoming"
STAGING = "incoming"
DEFAULT_STAGING_TTL = 24 * 3600.0

_verified: dict[tuple[str, int, int, int, int], bool] = {}
_verified_lock = threading.Lock()


def object_relpath(oid: str) -> str:
    """The path of object `oid` relative to an objects directory (`ab/cd/abcd…`)."""
    return f"{oid[0:2]}/{oid[2:4]}/{oid}"


def backing_reference(oid: str) -> str:
    """The qcow2 backing-file name an overlay stored in this layout uses for its parent `oid`.

    Every object sits two directories below the objects root, so `../../ab/cd/abcd…` resolves
    to the parent object in any directory with this layout: the server's store and every
    client's cache alike.
    """
    return f"../../{object_relpath(oid)}"


def hash_file(path: Path) -> tuple[str, int]:
    """The sha256 hex and size of the file at `path`."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ObjectStore:
    """Objects under `root` (the `lfs/objects` directory of a repository or a client cache)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def staging(self) -> ObjectStore:
        """The staging area beside this store (`lfs/incoming` for `lfs/objects`).

        It sits in the same parent directory, hence on the same filesystem, so promoting an
        object is one atomic rename.
        """
        return ObjectStore(self.root.parent / STAGING)

    def path(self, oid: str) -> Path:
        """Where object `oid` lives (whether or not it exists)."""
        return self.root / object_relpath(object_id(oid))

    def has(self, oid: str, size: int | None = None) -> bool:
        """True when the object exists (and has `size` bytes, if given); does not hash."""
        try:
            stat = self.path(oid).stat()
        except FileNotFoundError:
            return False
        return size is None or stat.st_size == size

    def size(self, oid: str) -> int:
        """The size of a stored object."""
        try:
            return self.path(oid).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"object sha256:{oid} is not in the store") from None

    def verified_path(self, oid: str) -> Path:
        """The path of object `oid` after checking its bytes hash to `oid`.

        Raises:
            NotFound: no such object.
            IntegrityError: the stored bytes do not match (the object is corrupt).
        """
        path = self.path(oid)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise NotFound(f"object sha256:{oid} is not in the store") from None
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        with _verified_lock:
            if key in _verified:
                return path
        actual, _ = hash_file(path)
        if actual != oid:
            raise IntegrityError(f"object sha256:{oid} is corrupt: its bytes hash to {actual}")
        with _verified_lock:
            _verified[key] = True
        return path

    @contextmanager
    def workspace(self) -> Iterator[Path]:
        """A scratch directory two levels below the root, so relative backing refs resolve."""
        incoming = self.root / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=incoming))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def put_stream(
        self,
        stream: IO[bytes],
        expected_oid: str | None = None,
        expected_size: int | None = None,
        max_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, int]:
        """Store the bytes read from `stream`; return (oid, size).

        The object appears atomically and only after it matched `expected_oid`/`expected_size`.

        Raises:
            PayloadTooLarge: more than `max_size` bytes arrived.
            IntegrityError: the bytes do not match the expected id or size.
        """
        if expected_oid is not None:
            object_id(expected_oid)
        with self.workspace() as scratch:
            tmp = scratch / "object"
            digest = hashlib.sha256()
            size = 0
            with open(tmp, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if max_size is not None and size > max_size:
                        raise PayloadTooLarge(
                            f"upload larger than the {max_size}-byte limit; nothing stored"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(size)
                out.flush()
                os.fsync(out.fileno())
            oid = digest.hexdigest()
            if expected_size is not None and size != expected_size:
                raise IntegrityError(
                    f"upload has {size} bytes, expected {expected_size}; nothing stored"
                )
            if expected_oid is not None and oid != expected_oid:
                raise IntegrityError(
                    f"upload hashes to sha256:{oid}, expected sha256:{expected_oid}; nothing stored"
                )
            self._install(tmp, oid)
        return oid, size

    def put_file(self, path: Path, expected_oid: str | None = None) -> tuple[str, int]:
        """Store a copy of the file at `path`; return (oid, size)."""
        with open(path, "rb") as f:
            return self.put_stream(f, expected_oid=expected_oid)

    def _install(self, tmp: Path, oid: str) -> None:
        final = self.path(oid)
        if final.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def promote(self, staging: ObjectStore, oids: Iterable[str]) -> list[str]:
        """Move the objects `oids` that are only staged into this store; return those moved.

        Each staged object is verified against its id again (the per-process cache makes this
        free when the push checks just hashed the same unchanged file), then renamed into
        place read-only. Ids already in this store are skipped (a staged duplicate is
        removed); ids in neither place are left to the caller's checks. Callers hold the
        repository lock, so a concurrent prune cannot remove an object between check and
        promotion.

        Raises:
            IntegrityError: a staged object no longer matches its id (nothing of it moves).
        """
        moved = []
        for oid in oids:
            staged = staging.path(oid)
            if not staged.exists():
                continue
            if self.path(oid).exists():
                staged.unlink(missing_ok=True)
                continue
            staging.verified_path(oid)
            self._install(staged, oid)
            moved.append(oid)
        return moved

    def prune(self, ttl_seconds: float, now: float | None = None) -> list[str]:
        """Remove objects (and scratch directories) older than `ttl_seconds`; return the ids.

        Meant for a staging area: uploads no accepted push referenced within the TTL.
        """
        now = time.time() if now is None else now
        cutoff = now - ttl_seconds
        removed = []
        for path in self.root.glob("??/??/*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path.name)
            except FileNotFoundError:
                continue
        scratch = self.root / INCOMING
        if scratch.is_dir():
            for leftover in scratch.iterdir():
                try:
                    if leftover.stat().st_mtime < cutoff:
                        shutil.rmtree(leftover, ignore_errors=True)
                except FileNotFoundError:
                    continue
        return removed

    def touch(self, oid: str) -> None:
        """Restart the TTL clock of a stored object (a client asked about it again)."""
        try:
            os.utime(self.path(oid))
        except FileNotFoundError:
            pass


class StagedView:
    """Reads of a store that also see its staging area: what the push checks look at.

    Objects are looked up in the main store first, then in staging; only the checks of a
    push use this view, never a download route.
    """

    def __init__(self, main: ObjectStore, staging: ObjectStore | None = None) -> None:
        self.main = main
        self.staging = staging if staging is not None else main.staging()

    def _holder(self, oid: str) -> ObjectStore:
        return self.main if self.main.has(oid) or not self.staging.has(oid) else self.staging

    def has(self, oid: str, size: int | None = None) -> bool:
        """True when the object is in the store or staged (with `size` bytes, if given)."""
        return self.main.has(oid, size) or self.staging.has(oid, size)

    def size(self, oid: str) -> int:
        """The size of the object, wherever it is."""
        return self._holder(oid).size(oid)

    def verified_path(self, oid: str) -> Path:
        """The verified path of the object, stored or staged (see `ObjectStore.verified_path`)."""
        return self._holder(oid).verified_path(oid)
