"""The CVL resolver the server uses for pushed CVL: its own repositories, or allow-listed origins.

A pushed CVL file is hostile input, and its imports name what the server would read on the
pusher's behalf. So the server never resolves `file:` imports (they could name any host file),
never asks a host the administrator did not allow, and never quotes what it fetched:

* An import whose URL is this server (its configured `public_url`, or the base URL the current
  request reached it by) names one of its own repositories; that repository is read in-process
  from the server root, with no network request at all.
* Any other `http(s)` import must have an origin (`scheme://host:port`) listed in the server
  config's `allowed_import_origins`. It is fetched without following redirects off that list,
  within a total deadline and a size limit; errors name the URL and status only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from cvl.errors import CvlImportError
from cvl.resolver import MAX_CVL_BYTES, check_cvl_name
from reposerver.errors import BadRequest
from reposerver.names import repository_name
from reposerver.settings import ServerSettings

MAX_REDIRECTS = 3
DEFAULT_TIMEOUT = 10.0


def origin(url: str) -> str | None:
    """`scheme://host:port` of an http(s) URL, lower-cased, default port explicit (else None)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def _base(url: str) -> tuple[str, str] | None:
    """(origin, path prefix without trailing slash) of a server base URL."""
    found = origin(url)
    if found is None:
        return None
    return found, urlsplit(url).path.rstrip("/")


class ServerResolver:
    """Resolves imports of pushed CVL for the server (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        own_bases: Iterable[str | None] = (),
        allowed_origins: Iterable[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = MAX_CVL_BYTES,
        network: bool = True,
    ) -> None:
        self.root = Path(root)
        self.own = [b for b in (_base(u) for u in own_bases if u) if b is not None]
        self.allowed = {o for o in (origin(u) for u in allowed_origins) if o is not None}
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.network = network

    def fetch(
        self, url: str, cvl: str, version: str | None, base_dir: str | None
    ) -> tuple[str, str]:
        """`(text, resolved version)` of `cvl` in the repository at `url`."""
        check_cvl_name(cvl)
        if url.startswith("file:"):
            raise CvlImportError(
                f"import {url!r} refused: the repository server does not read files on a "
                "pusher's behalf (import by the http(s) URL of a repository)"
            )
        name = self.own_repository(url)
        if name is not None:
            from reposerver.client import read_cvl

            try:
                text, resolved = read_cvl(self.root / name, cvl, version)
            except CvlImportError:
                what = f"version {version} of {cvl}" if version else cvl
                raise CvlImportError(f"{url}: this server has no {what} there") from None
            return text, resolved
        found = origin(url)
        if found is None:
            raise CvlImportError(f"unsupported import URL {url!r}: use http:// or https://")
        if not self.network or found not in self.allowed:
            raise CvlImportError(
                f"import from {found} refused: the repository server resolves imports only "
                "from its own repositories and the origins its administrator allows "
                "(allowed_import_origins in the server config)"
            )
        return self._http(url.rstrip("/"), cvl, version)

    def own_repository(self, url: str) -> str | None:
        """The name of this server's repository that `url` names, if it names one."""
        here = _base(url)
        if here is None:
            return None
        for own_origin, prefix in self.own:
            if here[0] != own_origin or not here[1].startswith(prefix + "/"):
                continue
            name = unquote(here[1][len(prefix) + 1 :]).rstrip("/").removesuffix(".git")
            try:
                return repository_name(name) if "/" not in name else None
            except BadRequest:
                return None
        return None

    def _http(self, base: str, cvl: str, version: str | None) -> tuple[str, str]:
        import requests

        target = f"{base}/versions/{version}/{cvl}" if version else f"{base}/latest/{cvl}"
        deadline = time.monotonic() + self.timeout
        url = target
        try:
            with requests.Session() as session:
                session.trust_env = False
                for _ in range(MAX_REDIRECTS + 1):
                    response = session.get(
                        url, allow_redirects=False, stream=True, timeout=self._left(deadline)
                    )
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("Location", ""))
                        response.close()
                        if origin(url) not in self.allowed:
                            raise CvlImportError(
                                f"GET {target} redirected off the allowed origins: refused"
                            )
                        continue
                    break
                else:
                    raise CvlImportError(f"GET {target}: too many redirects")
                status = response.status_code
                body = self._read(response, target, deadline) if status == 200 else b""
        except requests.RequestException as exc:
            raise CvlImportError(
                f"cannot reach {target} ({type(exc).__name__})", unreachable=True
            ) from None
        if status != 200:
            raise CvlImportError(f"GET {target} answered HTTP {status}")
        return self._text(body, target), self._resolved(base, cvl, version, url, target)

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CvlImportError("import took longer than the server's fetch timeout")
        return left

    def _read(self, response: object, target: str, deadline: float) -> bytes:
        chunks, size = [], 0
        for chunk in response.iter_content(16384):  # type: ignore[attr-defined]
            size += len(chunk)
            if size > self.max_bytes:
                response.close()  # type: ignore[attr-defined]
                raise CvlImportError(f"{target} is larger than {self.max_bytes} bytes")
            self._left(deadline)
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _text(body: bytes, target: str) -> str:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise CvlImportError(f"{target} is not UTF-8 text") from None

    @staticmethod
    def _resolved(base: str, cvl: str, version: str | None, final: str, target: str) -> str:
        if version:
            return version
        prefix = base + "/versions/"
        number, _, rest = final[len(prefix) :].partition("/")
        if not final.startswith(prefix) or not number.isdigit() or rest != cvl:
            raise CvlImportError(f"GET {target} did not redirect to {prefix}N/{cvl}")
        return number


def server_resolver(
    settings: ServerSettings, request_base: str | None, network: bool = True
) -> ServerResolver:
    """The resolver for pushed CVL under `settings`, as reached by a request to
    `request_base`; `network=False` reads own repositories only (what the pages use)."""
    return ServerResolver(
        settings.root,
        (settings.public_url, request_base),
        settings.allowed_import_origins,
        timeout=settings.import_timeout_seconds,
        network=network,
    )


def hook_resolver(root: Path) -> ServerResolver:
    """The resolver for pushes that stock `git receive-pack` takes (ssh, local path), whose
    hooks have no running server: own repositories by the `public_url` and origins
    `allowed_import_origins` of the server config named in `COLLECTIVE_REPOSERVER_CONFIG`
    (when set), else own repositories by no URL and no origin at all."""
    import json
    import os

    from reposerver.settings import CONFIG_ENV

    config: dict[str, object] = {}
    if os.environ.get(CONFIG_ENV):
        try:
            loaded = json.loads(Path(os.environ[CONFIG_ENV]).read_text())
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            config = {}
    origins = config.get("allowed_import_origins")
    public_url = config.get("public_url")
    return ServerResolver(
        root,
        [public_url] if isinstance(public_url, str) else [],
        [o for o in origins if isinstance(o, str)] if isinstance(origins, list) else [],
    )
