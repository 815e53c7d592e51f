"""What `cui` uses to talk to the cluster manager: HTTP over its Unix socket or TCP.

The transport is the standard library's `http.client` (one connection per call): `cui status`
starts in a fraction of the time an HTTP library with its own dependencies takes to import.

The address is `--utility URL`, else `$COLLECTIVE_UTILITY`, else the default daemon's socket
`unix://<default state dir>/utility.sock`. HTTP error answers become the same `UtilityError`
subclasses the daemon raised, so `cui.main` maps them to exit codes in one place.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from utility.adapters.tls import check_token_transport, client_context
from utility.errors import (
    CheckFailed,
    Conflict,
    Forbidden,
    HostUnreachable,
    NotFound,
    Unauthorized,
    UtilityError,
)

_BY_STATUS: dict[int, type[UtilityError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    503: HostUnreachable,
}


NDJSON = "application/x-ndjson"


def _error(status: int, data: Any) -> UtilityError:
    """The error an answer with HTTP `status` and JSON `data` stands for."""
    message = (
        (data or {}).get("error", f"HTTP {status}") if isinstance(data, dict) else f"HTTP {status}"
    )
    if status == 422 and isinstance(data, dict) and "problems" in data:
        return CheckFailed(list(data["problems"]))
    return _BY_STATUS.get(status, UtilityError)(message)


def default_state_dir() -> Path:
    """`$COLLECTIVE_STATE`, else `~/.local/state/collective/utility`."""
    env = os.environ.get("COLLECTIVE_STATE")
    return Path(env) if env else Path.home() / ".local" / "state" / "collective" / "utility"


def default_url() -> str:
    """`$COLLECTIVE_UTILITY`, else the default daemon's Unix socket."""
    return os.environ.get("COLLECTIVE_UTILITY") or f"unix://{default_state_dir() / 'utility.sock'}"


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix domain socket (the daemon's default door)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class UtilityClient:
    """A client of the cluster manager API (Unix socket, http, or https with a CA).

    Args:
        url: `unix:///path/utility.sock`, `https://host:port` or `http://host:port`
            (tokens only to loopback over http); default as described above.
        token: bearer token (`$COLLECTIVE_TOKEN` when None).
        timeout: seconds per request; None waits as long as a start takes.
        ca_file: the CA that signed the daemon's certificate (`$COLLECTIVE_CA` when None).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.url = url or default_url()
        self.token = token if token is not None else os.environ.get("COLLECTIVE_TOKEN")
        self.timeout = timeout
        self.ca_file = ca_file

    def _connection(self) -> http.client.HTTPConnection:
        """A connection to `self.url` (one per call: `cui` makes a request or two)."""
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return _UnixConnection(parts.path, self.timeout)
        host = parts.hostname or "127.0.0.1"
        check_token_transport(parts.scheme, host, bool(self.token))
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port == -1:
            raise UtilityError(f"utility URL {self.url!r} has a bad port")
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=client_context(self.ca_file)
            )
        if parts.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=self.timeout)
        raise UtilityError(
            f"utility URL {self.url!r}: use unix:///PATH, https://HOST:PORT or http://HOST:PORT"
        )

    def _headers(self, body: dict[str, Any] | None, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _unreachable(self, exc: Exception) -> HostUnreachable:
        return HostUnreachable(
            f"cannot reach the cluster manager at {self.url}: {exc} "
            "(start it with `cui utility serve`)"
        )

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON answer or raise the matching error."""
        payload = json.dumps(body).encode() if body is not None else None
        conn = self._connection()
        try:
            conn.request(
                method, path, body=payload, headers=self._headers(body, "application/json")
            )
            response = conn.getresponse()
            status, raw = response.status, response.read()
        except (http.client.HTTPException, OSError) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()
        return _answer(status, raw)

    def streamed(
        self, path: str, body: dict[str, Any], progress: Callable[[str, int, int], None]
    ) -> Any:
        """POST asking for NDJSON progress: call `progress(label, done, total)` for each
        progress line, return the final result or raise its error (see `utility.web.api`)."""
        payload = json.dumps(body).encode()
        conn = self._connection()
        try:
            conn.request("POST", path, body=payload, headers=self._headers(body, NDJSON))
            response = conn.getresponse()
            if response.status >= 400 or NDJSON not in (response.getheader("Content-Type") or ""):
                return _answer(response.status, response.read())
            for line in iter(response.readline, b""):
                if not line.strip():
                    continue
                item = json.loads(line)
                if "progress" in item:
                    p = item["progress"]
                    progress(str(p["label"]), int(p["done"]), int(p["total"]))
                elif "result" in item:
                    return item["result"]
                else:
                    raise _error(int(item.get("status", 500)), item)
        except (http.client.HTTPException, OSError) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()
        raise UtilityError(
            f"the cluster manager at {self.url} ended the answer without a result (did it stop?)"
        )

    # -- one method per route ---------------------------------------------------------------

    def whoami(self) -> Any:
        return self.request("GET", "/v1/whoami")

    def hosts(self) -> Any:
        return self.request("GET", "/v1/hosts")

    def add_host(
        self, name: str, uri: str, memory: str, max_vms: int, underlay: str | None = None
    ) -> Any:
        body: dict[str, Any] = {"name": name, "uri": uri, "memory": memory, "max_vms": max_vms}
        if underlay is not None:
            body["underlay"] = underlay
        return self.request("POST", "/v1/hosts", body)

    def remove_host(self, name: str) -> Any:
        return self.request("DELETE", f"/v1/hosts/{quote(name, safe='')}")

    def host_dead(self, name: str) -> Any:
        return self.request("POST", f"/v1/hosts/{quote(name, safe='')}/dead")

    def drain(self, name: str, progress: Callable[[str, int, int], None] | None = None) -> Any:
        path = f"/v1/hosts/{quote(name, safe='')}/drain"
        if progress is not None:
            return self.streamed(path, {}, progress)
        return self.request("POST", path)

    def undrain(self, name: str) -> Any:
        return self.request("POST", f"/v1/hosts/{quote(name, safe='')}/undrain")

    def move(
        self,
        name: str,
        component: str,
        host: str,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> Any:
        body = {"name": name, "component": component, "host": host}
        if progress is not None:
            return self.streamed("/v1/vaps/move", body, progress)
        return self.request("POST", "/v1/vaps/move", body)

    def rebalance(
        self, dry_run: bool, progress: Callable[[str, int, int], None] | None = None
    ) -> Any:
        if progress is not None:
            return self.streamed("/v1/rebalance", {"dry_run": dry_run}, progress)
        return self.request("POST", "/v1/rebalance", {"dry_run": dry_run})

    def add_vlans(self, spec: str) -> Any:
        return self.request("POST", "/v1/vlans", {"range": spec})

    def add_public_ips(self, spec: str) -> Any:
        return self.request("POST", "/v1/publicips", {"range": spec})

    def pools(self) -> Any:
        return self.request("GET", "/v1/pools")

    def blacklist(self) -> Any:
        return self.request("GET", "/v1/blacklist")

    def blacklist_add(self, url: str, version: str) -> Any:
        return self.request("POST", "/v1/blacklist", {"url": url, "version": version})

    def blacklist_remove(self, url: str, version: str) -> Any:
        return self.request("POST", "/v1/blacklist/remove", {"url": url, "version": version})

    def trust(self) -> Any:
        return self.request("GET", "/v1/trust")

    def set_trust(self, url: str | None, require_signed: bool) -> Any:
        return self.request("POST", "/v1/trust", {"url": url, "require_signed": require_signed})

    def trust_key(self, url: str | None, key: str) -> Any:
        return self.request("POST", "/v1/trust/keys", {"url": url, "key": key})

    def violations(self) -> Any:
        return self.request("GET", "/v1/blacklist/violations")

    def start(
        self,
        bundle: dict[str, Any],
        secrets: dict[str, str] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        restart: str = "always",
        name: str | None = None,
    ) -> Any:
        """Start a VAP from a CVL bundle (`Bundle.to_wire()`), named `name` (default: the
        file's stem)."""
        body = {"bundle": bundle, "name": name, "secrets": secrets or {}, "restart": restart}
        if progress is not None:
            return self.streamed("/v1/vaps/start", body, progress)
        return self.request("POST", "/v1/vaps/start", body)

    def stop(self, name: str, component: str | None = None, timeout: float | None = None) -> Any:
        return self.request(
            "POST", "/v1/vaps/stop", {"name": name, "component": component, "timeout": timeout}
        )

    def update(
        self,
        name: str,
        component: str | None = None,
        dry_run: bool = False,
        secrets: dict[str, str] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        bundle: dict[str, Any] | None = None,
    ) -> Any:
        """Update VAP `name` to a new CVL `bundle`, or re-evaluate the one it runs."""
        body = {
            "name": name,
            "component": component,
            "dry_run": dry_run,
            "secrets": secrets or {},
            "bundle": bundle,
        }
        if progress is not None:
            return self.streamed("/v1/vaps/update", body, progress)
        return self.request("POST", "/v1/vaps/update", body)

    def history(self, name: str | None = None) -> Any:
        query = f"?name={quote(name, safe='')}" if name else ""
        return self.request("GET", f"/v1/history{query}")

    def status(self, name: str | None = None) -> Any:
        query = f"?name={quote(name, safe='')}" if name else ""
        return self.request("GET", f"/v1/vaps{query}")

    def show(self, name: str) -> Any:
        """The CVL bundle VAP `name` runs."""
        return self.request("GET", f"/v1/vaps/bundle?name={quote(name, safe='')}")

    def subscriptions(self) -> Any:
        return self.request("GET", "/v1/subscriptions")

    def subscribe(
        self, repository: str, events_url: str | None, auth: tuple[str, str] | None
    ) -> Any:
        body: dict[str, Any] = {"repository": repository, "events_url": events_url}
        if auth:
            body.update(user=auth[0], token=auth[1])
        return self.request("POST", "/v1/subscriptions", body)

    def unsubscribe(self, repository: str, auth: tuple[str, str] | None) -> Any:
        body: dict[str, Any] = {"repository": repository}
        if auth:
            body.update(user=auth[0], token=auth[1])
        return self.request("POST", "/v1/subscriptions/remove", body)

    def add_token(self, name: str, role: str) -> Any:
        return self.request("POST", "/v1/tokens", {"name": name, "role": role})

    def tokens(self) -> Any:
        return self.request("GET", "/v1/tokens")

    def revoke_token(self, name: str) -> Any:
        return self.request("DELETE", "/v1/tokens/" + quote(name, safe=""))

    def unowned(self) -> Any:
        return self.request("GET", "/v1/reconcile")


def _answer(status: int, raw: bytes) -> Any:
    """The decoded JSON of a plain (not streamed) answer, or its error raised."""
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = {"error": raw.decode(errors="replace")[:300]}
    if status >= 400:
        raise _error(status, data)
    return data
