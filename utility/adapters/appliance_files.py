"""Where a VM appliance's files come from: its repository version, or the CVL file's directory.

The README contract: files a VM appliance names (`vm`, disks) resolve against its origin's
repository version, or against the CVL file's directory when the origin is null. This module is
the adapter over `reposerver.client`; everything above it sees `ApplianceFiles`.
"""

from __future__ import annotations

import posixpath
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from utility.adapters.bundles import StoredBundle
from utility.adapters.signed_release import SignedRelease
from utility.core.model_view import Origin
from utility.core.sizes import format_size
from utility.errors import ApplianceError, TrustRefused

Progress = Callable[[int, int], None]
"""`progress(bytes_done, bytes_total)` while an object downloads."""

MEMO_ENTRIES = 512
MEMO_LARGEST = 1 << 20
"""Small answers about repository versions (domain XML, disk lists) kept in memory."""
_MEMO: OrderedDict[tuple[str, ...], Any] = OrderedDict()
_MEMO_LOCK = threading.Lock()


class ApplianceFiles(Protocol):
    """Read access to one appliance version's files."""

    label: str

    def read(self, name: str) -> bytes:
        """The bytes of file `name`; raises ApplianceError when it does not exist."""
        ...

    def local_path(
        self, name: str, cache_dir: Path, progress: Progress | None = None, fetch: bool = True
    ) -> Path:
        """A local file with the content of `name` (a program disk: a usable qcow2 chain);
        `progress` hears about each download. With `fetch` False a program disk is not
        downloaded: the answer is where its top object lands, from the version's disk list
        (what a dry run plans with)."""
        ...


class DirectoryFiles:
    """Files of a plain directory: a wholly local appliance or an unversioned file: import."""

    def __init__(self, directory: Path, label: str) -> None:
        self.directory = directory
        self.label = label

    def _path(self, name: str) -> Path:
        path = (self.directory / name).resolve()
        if not path.is_relative_to(self.directory.resolve()):
            raise ApplianceError(f"{self.label}: {name!r} points outside {self.directory}")
        if not path.is_file():
            raise ApplianceError(f"{self.label}: file {name!r} not found in {self.directory}")
        return path

    def read(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def local_path(
        self, name: str, cache_dir: Path, progress: Progress | None = None, fetch: bool = True
    ) -> Path:
        return self._path(name)


class FetchProgress:
    """Progress of one object download, on the daemon's stderr: a bar on a terminal, else a line
    at each quarter (objects already in the cache are not downloaded and print nothing)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        if total <= 0:
            return
        quarter = min(4, done * 4 // total)
        if sys.stderr.isatty():
            bar = "#" * (done * 30 // total)
            sys.stderr.write(
                f"\rfetching {self.label} [{bar:<30}] {format_size(done)}/{format_size(total)}"
            )
            if done >= total:
                sys.stderr.write("\n")
        elif quarter != self.shown:
            sys.stderr.write(f"fetching {self.label}: {quarter * 25}% of {format_size(total)}\n")
        self.shown = quarter
        sys.stderr.flush()


class RepositoryFiles:
    """Files of one version of a repository, read through `reposerver.client`.

    With a `release` (the version's signed tag verified,
    `utility.adapters.signed_release`), every file read and every disk chain fetched is checked
    against the signed commit's tree first.
    """

    def __init__(self, origin: Origin, release: SignedRelease | None = None) -> None:
        from reposerver.client import open_repository

        self.origin = origin
        self.release = release
        self.label = f"{origin.name or origin.url} v{origin.version}"
        self.repository = open_repository(origin.url)

    def _remembered(self, what: tuple[str, ...], fetch: Callable[[], Any]) -> Any:
        """`fetch()`, answered from memory when this version's `what` was fetched before: a
        version never changes, so an update re-reads only the versions it moves to."""
        key = (self.origin.url.rstrip("/"), str(self.origin.version), *what)
        with _MEMO_LOCK:
            if key in _MEMO:
                _MEMO.move_to_end(key)
                return _MEMO[key]
        value = fetch()
        if isinstance(value, bytes) and len(value) > MEMO_LARGEST:
            return value
        with _MEMO_LOCK:
            _MEMO[key] = value
            while len(_MEMO) > MEMO_ENTRIES:
                _MEMO.popitem(last=False)
        return value

    def _forget(self, what: tuple[str, ...]) -> None:
        with _MEMO_LOCK:
            _MEMO.pop((self.origin.url.rstrip("/"), str(self.origin.version), *what), None)

    def _checked(
        self, what: tuple[str, ...], fetch: Callable[[], Any], check: Callable[[Any], None]
    ) -> Any:
        """A remembered answer that passes `check`; one that fails is forgotten and fetched
        again once (it may predate a repair of the server), then refused."""
        for last in (False, True):
            value = self._remembered(what, fetch)
            if self.release is None:
                return value
            try:
                check(value)
                return value
            except TrustRefused:
                self._forget(what)
                if last:
                    raise
        raise AssertionError("unreachable")

    def read(self, name: str) -> bytes:
        version = int(self.origin.version)
        assert_signed = self.release.check_file if self.release else (lambda _n, _d: None)
        try:
            return bytes(
                self._checked(
                    ("file", name),
                    lambda: bytes(self.repository.read_file(version, name)),
                    lambda data: assert_signed(name, data),
                )
            )
        except TrustRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - the repository's errors become ours, with where
            raise ApplianceError(f"{self.label}: cannot read {name!r}: {exc}") from exc

    def local_path(
        self, name: str, cache_dir: Path, progress: Progress | None = None, fetch: bool = True
    ) -> Path:
        version = int(self.origin.version)

        def signed_top(listed: list[dict[str, Any]]) -> None:
            for d in listed:
                if d["name"] == name and self.release is not None:
                    self.release.check_disk(name, str(d["sha256"]))

        try:
            listed = self._checked(("disks",), lambda: self.repository.disks(version), signed_top)
        except TrustRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - the repository's errors become ours, with where
            raise ApplianceError(f"{self.label}: cannot list disks: {exc}") from exc
        found = [d for d in listed if d["name"] == name]
        if found:
            disk = found[0]
            if not disk["chain"] or disk["chain"][-1]["sha256"] != disk["sha256"]:
                raise ApplianceError(
                    f"{self.label}: disk {name!r}: its chain does not end in "
                    f"its top object sha256:{str(disk['sha256'])[:12]}"
                )
            if not fetch:
                from reposerver.objects import ObjectStore

                return ObjectStore(cache_dir / "objects" / "objects").path(str(disk["sha256"]))
            report = progress or FetchProgress(f"{self.label} {name}")
            try:
                from reposerver.disks import check_fetched_chain

                links = [
                    (
                        str(link["sha256"]),
                        Path(
                            self.repository.fetch_object(
                                link["sha256"], cache_dir / "objects", report
                            )
                        ),
                    )
                    for link in disk["chain"]
                ]
                check_fetched_chain(links)  # our own parser, before any qemu process sees it
                return links[-1][1]
            except Exception as exc:  # noqa: BLE001 - the repository's errors become ours
                raise ApplianceError(f"{self.label}: cannot fetch disk {name!r}: {exc}") from exc
        target = cache_dir / "files" / self.origin.url.replace("/", "_") / str(version) / name
        if not target.exists():
            data = self.read(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            tmp.write_bytes(data)
            tmp.replace(target)
        elif self.release is not None:
            self.release.check_file(name, target.read_bytes())  # the cache is checked too
        return target


class BundleFiles:
    """Files of a directory of a stored CVL bundle (the user's file's own directory, or a plain
    `file:` import inside it): read from the bundle, never from where the user had them."""

    def __init__(self, bundle: StoredBundle, directory: str, label: str) -> None:
        self.bundle = bundle
        self.directory = directory
        self.label = label

    def _name(self, name: str) -> str:
        joined = posixpath.normpath(posixpath.join(self.directory, name))
        inside = not self.directory or joined.startswith(self.directory + "/")
        if name.startswith("/") or joined.startswith("..") or not inside:
            raise ApplianceError(f"{self.label}: {name!r} points outside its directory")
        if not self.bundle.has(joined):
            raise ApplianceError(f"{self.label}: file {name!r} is not in the submitted bundle")
        return joined

    def read(self, name: str) -> bytes:
        return self.bundle.read(self._name(name))

    def local_path(
        self, name: str, cache_dir: Path, progress: Progress | None = None, fetch: bool = True
    ) -> Path:
        return self.bundle.object_path(self._name(name))


def files_for(
    origin: Origin | None,
    bundle: StoredBundle,
    local_files: bool = False,
    release: SignedRelease | None = None,
) -> ApplianceFiles:
    """The files of a component: its origin's repository version, or the bundle (the user's
    file's directory for a null origin, a bundled `file:` import); `local_files` lets the daemon
    read a `file:` origin outside the bundle from its own file system (administrators' VAPs
    only); `release`: the verified signed version the files are checked against."""
    if origin is None:
        return BundleFiles(bundle, "", f"local appliance in {bundle.root_dir}")
    parsed = urlparse(origin.url)
    if parsed.scheme == "file":
        path = unquote(parsed.path)
        relative = bundle.relative(path)
        if relative is not None and bundle.has(posixpath.join(relative, origin.cvl)):
            return BundleFiles(bundle, relative, f"{origin.name or origin.url} (bundled)")
        if not local_files:
            raise ApplianceError(
                f"{origin.url} is not in the submitted bundle: the utility reads no file of its "
                "own for a user"
            )
        directory = Path(path)
        if (directory / origin.cvl).is_file():
            return DirectoryFiles(directory, f"{origin.name or origin.url} (unversioned)")
    return RepositoryFiles(origin, release)
