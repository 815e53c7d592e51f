"""Where imported CVL text comes from: one `Resolver` interface, for `file:` and `http(s):` URLs.

`resolver.fetch(url, cvl, version, base_dir) -> (text, resolved_version)`:

* `http://` and `https://` (the repository server's layout, README contract):
  `GET {url}/versions/{version}/{cvl}`, or without a version `GET {url}/latest/{cvl}`, which
  redirects to `{url}/versions/{n}/{cvl}`; the resolved version is that `n`. A repository's
  clone URL (`…/DNS.git`) names the same repository as `…/DNS` (a trailing `.git` is dropped).
* `file:` — `file:DIR` relative to the importing file's directory, `file:///abs/DIR` or
  `file:/abs/DIR`. If DIR is a bare git repository (it has `HEAD` and `objects/`), the caller's
  `repo_reader(DIR, cvl, version)` reads the version from it; otherwise DIR is a plain directory
  holding the file, whose version is "unversioned" (a pinned version is then only noted: a plain
  directory has one version, the files in it).

The evaluator does no I/O of its own; everything it reads comes through the resolver it is handed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import unquote, urlsplit

from cvl.errors import CvlImportError

UNVERSIONED = "unversioned"
MAX_CVL_BYTES = 4 << 20
"""Largest CVL file an http import accepts (a server cannot make the client read without end)."""

RepoReader = Callable[[Path, str, "str | None"], tuple[str, str]]
"""`(repository_dir, cvl_name, version_or_None) -> (text, resolved_version)`."""


class Resolver(Protocol):
    """Fetches the text of an imported CVL file and tells which version it is."""

    def fetch(
        self, url: str, cvl: str, version: str | None, base_dir: str | None
    ) -> tuple[str, str]: ...


def canonical_url(url: str, base_dir: str | None) -> str:
    """The absolute form of an import URL: relative `file:` paths joined to `base_dir`.

    Pure string work (no file system access), so the evaluator can name origins exactly.
    """
    if url.startswith("file:"):
        return "file://" + file_url_path(url, base_dir)
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return repository_base(url)
    raise CvlImportError(
        f"unsupported import URL {url!r}: use file:DIR, file:///DIR, http:// or https://"
    )


def repository_base(url: str) -> str:
    """An http(s) repository URL without trailing slashes or the clone URL's `.git` suffix."""
    base = url.rstrip("/")
    last = urlsplit(base).path.rpartition("/")[2]
    if last.endswith(".git") and len(last) > len(".git") and base.endswith(last):
        base = base[: -len(".git")]
    return base


def file_url_path(url: str, base_dir: str | None) -> str:
    """The absolute, normalised directory path a `file:` URL names."""
    rest = unquote(url[len("file:") :])
    if rest.startswith("//"):
        netloc, _, path = rest[2:].partition("/")
        if netloc not in ("", "localhost"):
            raise CvlImportError(f"file URL {url!r} names another host ({netloc})")
        rest = "/" + path
    if not rest:
        raise CvlImportError(f"file URL {url!r} names no directory")
    if not rest.startswith("/"):
        if base_dir is None:
            raise CvlImportError(
                f"relative file URL {url!r} in a file that has no directory (fetched over "
                "http, or evaluated from text without base_dir): use an absolute file: URL"
            )
        rest = os.path.join(base_dir, rest)
    return os.path.normpath(rest)


def check_cvl_name(cvl: str) -> None:
    """Refuse `cvl` names that could leave the appliance's directory or repository."""
    pure = PurePosixPath(cvl)
    if not cvl or pure.is_absolute() or ".." in pure.parts or "\\" in cvl or "\0" in cvl:
        raise CvlImportError(
            f"bad cvl file name {cvl!r}: must be a relative path inside the appliance's directory"
        )


def is_bare_repository(path: Path) -> bool:
    """True for a bare git repository directory (how the repository part stores appliances)."""
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


class FileResolver:
    """`file:` imports: a repository directory (through `repo_reader`) or a plain directory."""

    def __init__(self, repo_reader: RepoReader | None = None) -> None:
        self.repo_reader = repo_reader

    def fetch(
        self, url: str, cvl: str, version: str | None, base_dir: str | None
    ) -> tuple[str, str]:
        check_cvl_name(cvl)
        directory = Path(file_url_path(url, base_dir))
        if not directory.is_dir():
            raise CvlImportError(f"{url}: no such directory {directory}")
        if is_bare_repository(directory):
            if self.repo_reader is None:
                raise CvlImportError(
                    f"{url}: {directory} is a git repository but no repository reader is "
                    "available (install the reposerver part)"
                )
            return self.repo_reader(directory, cvl, version)
        path = directory / cvl
        try:
            return path.read_text(encoding="utf-8"), UNVERSIONED
        except FileNotFoundError:
            raise CvlImportError(f"{url}: no file {cvl} in {directory}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CvlImportError(f"{url}: cannot read {path}: {exc}") from None


class HttpResolver:
    """`http(s):` imports from a repository server (`/versions/N/FILE`, `/latest/FILE`)."""

    def __init__(self, timeout: float = 15.0, session: object | None = None) -> None:
        import requests

        self.timeout = timeout
        self.session = session if session is not None else requests.Session()

    def fetch(
        self, url: str, cvl: str, version: str | None, base_dir: str | None
    ) -> tuple[str, str]:
        import requests

        check_cvl_name(cvl)
        base = repository_base(url)
        target = f"{base}/versions/{version}/{cvl}" if version else f"{base}/latest/{cvl}"
        try:
            response = self.session.get(  # type: ignore[attr-defined]
                target, timeout=self.timeout, allow_redirects=True, stream=True
            )
            body = self._read_capped(response, target)
        except requests.RequestException as exc:
            raise CvlImportError(f"cannot reach {target}: {exc}", unreachable=True) from None
        if response.status_code == 404:
            what = f"version {version} of {cvl}" if version else cvl
            raise CvlImportError(f"{base} has no {what} (HTTP 404 for {target})")
        if response.status_code != 200:
            raise CvlImportError(f"GET {target} answered HTTP {response.status_code}")
        if version:
            resolved = version
        else:
            prefix = base + "/versions/"
            number, _, rest = response.url[len(prefix) :].partition("/")
            if not response.url.startswith(prefix) or not number or rest != cvl:
                raise CvlImportError(
                    f"GET {target} did not redirect to {prefix}N/{cvl} (ended at {response.url})"
                )
            resolved = unquote(number)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise CvlImportError(f"{target} is not UTF-8 text") from None
        return text, resolved

    @staticmethod
    def _read_capped(response: object, target: str) -> bytes:
        chunks, size = [], 0
        for chunk in response.iter_content(65536):  # type: ignore[attr-defined]
            size += len(chunk)
            if size > MAX_CVL_BYTES:
                response.close()  # type: ignore[attr-defined]
                raise CvlImportError(f"{target} is larger than {MAX_CVL_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


class DefaultResolver:
    """`file:` and `http(s):` together, with a cache per (url, cvl, resolved version).

    Pinned versions are immutable, so they are fetched once; `latest` and plain directories are
    asked every time (latest moves, a plain directory's file can change).
    """

    def __init__(
        self,
        repo_reader: RepoReader | None = None,
        http: HttpResolver | None = None,
    ) -> None:
        self.files = FileResolver(repo_reader)
        self._http = http
        self._cache: dict[tuple[str, str, str], str] = {}

    @property
    def http(self) -> HttpResolver:
        if self._http is None:
            self._http = HttpResolver()
        return self._http

    def fetch(
        self, url: str, cvl: str, version: str | None, base_dir: str | None
    ) -> tuple[str, str]:
        absolute = canonical_url(url, base_dir)
        if version is not None and (absolute, cvl, version) in self._cache:
            return self._cache[(absolute, cvl, version)], version
        if absolute.startswith("file:"):
            text, resolved = self.files.fetch(absolute, cvl, version, base_dir)
        else:
            text, resolved = self.http.fetch(absolute, cvl, version, base_dir)
        if resolved != UNVERSIONED:
            self._cache[(absolute, cvl, resolved)] = text
        return text, resolved
