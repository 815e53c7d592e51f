"""Reading repositories by URL: what `cui`, the CVL resolver and the utility use.

`open_repository(url)` accepts `http(s)://HOST/NAME` (the server's layout) and `file://` paths
of repository directories (or a plain path). Both readers offer the same methods.

Disks: `disks(version)` lists each program disk's object chain, base first. Objects are cached
per host in `CACHE/objects/ab/cd/<sha256>` (the Git LFS layout), downloaded once, verified by
hash and renamed into place atomically; an interrupted download resumes with a Range request.
Because every overlay names its parent as `../../ab/cd/<sha256>`, a fully fetched chain is a
usable qcow2 chain in the cache as it is. The utility calls::

    top = open_repository(url).fetch_disk(version, "disk.qcow2", cache_dir)
    # then: qemu-img create -f qcow2 -F qcow2 -b <top> instance.qcow2
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from dulwich.objects import ObjectID

from reposerver.errors import BadRequest, IntegrityError, NotFound, RepositoryError, Unreachable
from reposerver.names import object_id
from reposerver.objects import CHUNK, ObjectStore
from reposerver.repository import Repository

Progress = Callable[[int, int], None]
"""`progress(bytes_done, bytes_total)` during a download."""


class Reader(Protocol):
    """What both readers offer."""

    def latest(self) -> int: ...
    def versions(self) -> list[dict[str, Any]]: ...
    def read_file(self, version: int, name: str) -> bytes: ...
    def tag(self, version: int) -> bytes: ...
    def commit(self, version: int) -> str: ...
    def git_object(self, sha1: str) -> bytes: ...
    def disks(self, version: int) -> list[dict[str, Any]]: ...
    def fetch_object(
        self, sha256: str, cache_dir: Path, progress: Progress | None = None
    ) -> Path: ...


class _DiskFetching:
    """Shared by both readers: fetch a whole disk chain into the cache."""

    def disks(self, version: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def fetch_object(self, sha256: str, cache_dir: Path, progress: Progress | None = None) -> Path:
        raise NotImplementedError

    def fetch_disk(
        self, version: int, name: str, cache_dir: Path, progress: Progress | None = None
    ) -> Path:
        """Fetch every object of disk `name` of `version`; return the top object's path.

        The fetched chain is checked with our own qcow2 parser (`disks.check_fetched_chain`)
        before it is returned, so no qemu process ever opens a chain the server made up.
        """
        from reposerver.disks import check_fetched_chain

        for disk in self.disks(version):
            if disk["name"] == name:
                links = [
                    (str(link["sha256"]), self.fetch_object(link["sha256"], cache_dir, progress))
                    for link in disk["chain"]
                ]
                if not links or links[-1][0] != disk["sha256"]:
                    raise IntegrityError(f"disk {name!r}: its chain does not end in its object")
                check_fetched_chain(links)
                return links[-1][1]
        raise NotFound(f"version {version} has no disk {name!r}")


class LocalRepository(_DiskFetching):
    """A repository directory on this machine."""

    def __init__(self, path: Path) -> None:
        self.repository = Repository(path)

    def latest(self) -> int:
        return self.repository.latest()

    def versions(self) -> list[dict[str, Any]]:
        return [v.to_json() for v in self.repository.versions()]

    def read_file(self, version: int, name: str) -> bytes:
        entry = self.repository.file(version, name)
        if entry.pointer is not None:
            return self.repository.store.verified_path(entry.pointer.oid).read_bytes()
        return entry.data

    def tag(self, version: int) -> bytes:
        return self.repository.raw_tag(version)

    def commit(self, version: int) -> str:
        return self.repository.commit(version).id.decode()

    def git_object(self, sha1: str) -> bytes:
        """A git object as `TYPE SIZE\\0BODY` (its SHA-1 is its name; callers check it)."""
        try:
            obj = self.repository.git.object_store[ObjectID(sha1.encode())]
        except (KeyError, ValueError):
            raise NotFound(f"{self.repository.name} has no git object {sha1}") from None
        body = obj.as_raw_string()
        return bytes(obj.type_name + b" " + str(len(body)).encode() + b"\0" + body)

    def disks(self, version: int) -> list[dict[str, Any]]:
        return self.repository.disks(version)

    def fetch_object(self, sha256: str, cache_dir: Path, progress: Progress | None = None) -> Path:
        cache = ObjectStore(Path(cache_dir) / "objects")
        if cache.has(sha256):
            return cache.verified_path(sha256)
        source = self.repository.store.verified_path(object_id(sha256))
        with open(source, "rb") as f:
            cache.put_stream(f, expected_oid=sha256)
        return cache.verified_path(sha256)


class HttpRepository(_DiskFetching):
    """A repository served by `reposerver` at `base` (`http://HOST/NAME`)."""

    def __init__(
        self,
        base: str,
        timeout: float = 30.0,
        auth: tuple[str, str] | None = None,
        deadline: float = 120.0,
    ) -> None:
        import requests

        self.base = base.rstrip("/")
        self.timeout = timeout
        self.deadline = deadline
        self.session = requests.Session()
        if auth:
            self.session.auth = auth

    def _get(self, path: str, **kwargs: Any) -> Any:
        import requests

        url = f"{self.base}/{path}"
        streamed = kwargs.pop("stream", False)
        try:
            response = self.session.get(url, timeout=self.timeout, stream=True, **kwargs)
            _within_deadline(response, url, self.deadline, streamed)
        except requests.RequestException as exc:
            raise Unreachable(f"cannot reach {url}: {exc}") from None
        if response.status_code == 404:
            raise NotFound(f"{url}: {_message(response)}")
        if response.status_code >= 400:
            raise RepositoryError(f"GET {url}: HTTP {response.status_code}: {_message(response)}")
        return response

    def index(self) -> dict[str, Any]:
        """The repository's JSON index."""
        return dict(self._get("").json())

    def latest(self) -> int:
        return int(self.index()["latest"])

    def versions(self) -> list[dict[str, Any]]:
        return list(self.index()["versions"])

    def read_file(self, version: int, name: str) -> bytes:
        return bytes(self._get(f"versions/{int(version)}/{name}").content)

    def tag(self, version: int) -> bytes:
        return bytes(self._get(f"versions/{int(version)}/tag").content)

    def commit(self, version: int) -> str:
        for v in self.versions():
            if v["number"] == version:
                return str(v["commit"])
        raise NotFound(f"{self.base} has no version {version}")

    def git_object(self, sha1: str) -> bytes:
        """A git object as `TYPE SIZE\\0BODY` (`GET /NAME/git-objects/SHA1`; callers check it)."""
        return bytes(self._get(f"git-objects/{sha1}").content)

    def disks(self, version: int) -> list[dict[str, Any]]:
        return list(self._get(f"versions/{int(version)}/disks.json").json())

    def fetch_object(self, sha256: str, cache_dir: Path, progress: Progress | None = None) -> Path:
        cache = ObjectStore(Path(cache_dir) / "objects")
        object_id(sha256)
        if cache.has(sha256):
            return cache.verified_path(sha256)
        partial_dir = cache.root / ".partial"
        partial_dir.mkdir(parents=True, exist_ok=True)
        # One download of an object at a time (threads and processes sharing the cache, as the
        # updates one publish event starts do); whoever waited finds it in the cache.
        with open(partial_dir / f"{sha256}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if cache.has(sha256):
                return cache.verified_path(sha256)
            return self._download(sha256, cache, partial_dir / sha256, progress)

    def _download(
        self, sha256: str, cache: ObjectStore, partial: Path, progress: Progress | None
    ) -> Path:
        """Fetch (resuming a partial download), verify, and move into the cache."""
        done = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={done}-"} if done else {}
        try:
            response = self._get(f"objects/sha256/{sha256}", headers=headers, stream=True)
        except RepositoryError as exc:
            if not done or "HTTP 416" not in str(exc):
                raise
            partial.unlink()  # the partial file is already whole (or longer): start again
            done, response = 0, self._get(f"objects/sha256/{sha256}", stream=True)
        if response.status_code != 206:
            done = 0
        total = done + int(response.headers.get("Content-Length", 0))
        with open(partial, "ab" if done else "wb") as out:
            for chunk in response.iter_content(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        digest = hashlib.sha256()
        with open(partial, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            partial.unlink()
            raise IntegrityError(
                f"download of sha256:{sha256} from {self.base} is corrupt; removed"
            )
        with open(partial, "rb") as f:
            cache.put_stream(f, expected_oid=sha256)
        partial.unlink()
        return cache.verified_path(sha256)


MIN_RATE = 256 * 1024
"""Bytes per second a streamed download must average (beyond the deadline) to continue."""


def _within_deadline(response: Any, url: str, deadline: float, streamed: bool) -> None:
    """Bound the whole transfer, not only each read: a server that answers a byte per timeout
    could otherwise hold a fetch forever. Small answers are read now within `deadline` seconds;
    a streamed one gets `deadline` plus its Content-Length at `MIN_RATE`."""
    import time

    size = int(response.headers.get("Content-Length") or 0) if streamed else 0
    end = time.monotonic() + deadline + size / MIN_RATE
    raw = response.raw
    # read1 returns as soon as any bytes arrive, so the deadline is checked between arrivals
    read = getattr(raw, "read1", None) or (lambda n, decode_content: raw.read(1024, decode_content))

    def bounded(_chunk_size: int = CHUNK) -> Any:
        while True:
            if time.monotonic() > end:
                response.close()
                raise Unreachable(f"{url}: not received within its deadline; gave up")
            chunk = read(CHUNK, decode_content=True)
            if not chunk:
                return
            yield chunk

    if streamed:
        response.iter_content = bounded
    else:
        response._content = b"".join(bounded())


def _message(response: Any) -> str:
    try:
        return str(response.json().get("error"))
    except ValueError:
        return response.text[:200]


def open_repository(
    url: str, auth: tuple[str, str] | None = None
) -> LocalRepository | HttpRepository:
    """A reader for the repository at `url` (`http(s)://HOST/NAME`, `file:///DIR` or a path)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        base = url.rstrip("/")
        if base.endswith(".git"):
            base = base[: -len(".git")]
        return HttpRepository(base, auth=auth)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadRequest(f"file URL {url!r} names another host")
        return LocalRepository(Path(unquote(parts.path)))
    if parts.scheme == "":
        return LocalRepository(Path(url))
    raise BadRequest(f"unsupported repository URL {url!r}: use http(s)://HOST/NAME or file:///DIR")


def read_cvl(directory: Path, cvl: str, version: str | None) -> tuple[str, str]:
    """The CVL resolver's repository reader: `cvl` of `version` (latest when None)."""
    from cvl.errors import CvlImportError

    try:
        reader = LocalRepository(Path(directory))
        number = int(version) if version is not None else reader.latest()
        if number == 0:
            raise NotFound(f"{directory} has no versions yet")
        return reader.read_file(number, cvl).decode("utf-8"), str(number)
    except (RepositoryError, ValueError, UnicodeDecodeError) as exc:
        raise CvlImportError(f"file:{directory}: {exc}") from None


def make_resolver() -> Any:
    """A CVL resolver whose `file:` imports of repository directories resolve by version."""
    from cvl.resolver import DefaultResolver

    return DefaultResolver(repo_reader=read_cvl)


def cache_dir_default() -> Path:
    """The per-host object cache (`$XDG_CACHE_HOME/collective` or `~/.cache/collective`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "collective"
