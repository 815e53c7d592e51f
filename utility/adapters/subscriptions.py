"""Which repository servers send this utility publish events, and the HMAC secret of each.

`cui utility subscribe URL` asks the daemon to register its events endpoint with the repository
at URL (`POST URL/subscribers` with the publisher-side write credentials, HTTP basic, used once
and never stored). The daemon generates a 256-bit secret, sends it to the server, and keeps it in
`<state>/subscriptions.json`, created 0600 in the 0700 state directory: like the API token
digests and the SQLite state, it is a credential the daemon needs without a human present, so it
lives on disk readable only by the daemon's user (never in logs, never in an API answer).

An event is verified with the secret of the repository it names (`"repository"` in the body);
a repository without a subscription falls back to the daemon's global secret, if any. A key is
chosen from the unverified body, but nothing else in it is used before the HMAC matches, and an
event naming repository A must be signed with A's secret.
"""

from __future__ import annotations

import json
import os
import secrets as secret_source
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from utility.errors import Forbidden, HostUnreachable, NotFound, Unauthorized, UtilityError

FILE_NAME = "subscriptions.json"


def repository_key(url: str) -> str:
    """The form repository URLs are compared in (no trailing slash or `.git`)."""
    url = url.strip().rstrip("/")
    return url[: -len(".git")] if url.endswith(".git") else url


class Subscriptions:
    """The subscriptions file of one state directory (thread-safe, atomic writes)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise UtilityError(f"{self.path}: not valid JSON ({exc}); fix or remove it") from None
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(data, indent=1, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def secret_for(self, repository: str) -> bytes | None:
        """The HMAC secret of events from `repository`, or None without a subscription."""
        entry = self._read().get(repository_key(repository))
        return str(entry["secret"]).encode() if entry else None

    def secrets(self) -> dict[str, bytes]:
        """Each subscribed repository's URL and HMAC secret (to authenticate events)."""
        return {url: str(entry["secret"]).encode() for url, entry in self._read().items()}

    def list(self) -> list[dict[str, Any]]:
        """Every subscription: repository URL, events URL, since when (never the secret)."""
        return [
            {"repository": url, "events_url": e.get("events_url"), "since": e.get("since")}
            for url, e in sorted(self._read().items())
        ]

    def subscribe(
        self, repository: str, events_url: str, auth: tuple[str, str] | None
    ) -> dict[str, Any]:
        """Register `events_url` with the repository server and remember the shared secret.

        The secret is generated here and sent to the server in the request body (the server
        keeps it 0600 and never answers it back when given); only then is it stored here.
        """
        repository = repository_key(repository)
        _check_http(repository, "repository URL")
        _check_http(events_url, "events URL")
        secret = secret_source.token_urlsafe(32)
        _call("POST", repository, {"url": events_url, "secret": secret}, auth)
        with self._lock:
            data = self._read()
            data[repository] = {"secret": secret, "events_url": events_url, "since": time.time()}
            self._write(data)
        return {"repository": repository, "events_url": events_url}

    def unsubscribe(self, repository: str, auth: tuple[str, str] | None) -> dict[str, Any]:
        """Remove the subscription at the server, then forget its secret."""
        repository = repository_key(repository)
        with self._lock:
            entry = self._read().get(repository)
        if entry is None:
            raise NotFound(f"not subscribed to {repository}")
        try:
            _call("DELETE", repository, {"url": entry["events_url"]}, auth)
        except NotFound:
            pass  # already gone at the server: forgetting the secret is all that is left
        with self._lock:
            data = self._read()
            data.pop(repository, None)
            self._write(data)
        return {"repository": repository, "events_url": entry["events_url"]}


def _check_http(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UtilityError(
            f"{what} {url!r}: must be http(s)://HOST/... (file: repositories "
            "have no server to send events)"
        )


def _call(method: str, repository: str, body: dict[str, str], auth: tuple[str, str] | None) -> None:
    """One request to `repository/subscribers`; the server's refusals become ours."""
    import requests

    url = f"{repository}/subscribers"
    try:
        answer = requests.request(method, url, json=body, auth=auth, timeout=30)
    except requests.RequestException as exc:
        raise HostUnreachable(f"cannot reach the repository server at {url}: {exc}") from None
    if answer.status_code < 300:
        return
    try:
        message = str(answer.json().get("error"))
    except ValueError:
        message = answer.text[:200]
    kind = {401: Unauthorized, 403: Forbidden, 404: NotFound}.get(answer.status_code, UtilityError)
    hint = (
        " (give the repository server's user and token: --user/--token-env)"
        if answer.status_code == 401
        else ""
    )
    raise kind(f"{method} {url}: HTTP {answer.status_code}: {message}{hint}")
