"""Publish events are exact: authenticated before parsed, fresh, once, and for one version.

The rules, in order (README "Publish events"):
1. the body is at most `MAX_EVENT_BYTES` (with a Content-Length), else 413, unread;
2. the `X-Collective-Signature` HMAC-SHA256 is checked against every candidate secret (each
   subscription's, then the global one) before a byte is parsed; none matches: 401 (403 when
   there is no secret at all);
3. the authenticated body must be exactly `{"repository", "version", "tag", "commit", "signer",
   "id", "timestamp"}` with the right types, and name the repository its secret belongs to;
4. `timestamp` within `window` seconds in the past and `skew` in the future, and `id` never seen
   before (ids are remembered durably in the state database for the window): else 409;
5. when it affects a running VAP, the version must exist at the repository with the commit the
   event names (else 409, nothing scheduled), and the update resolves that repository to exactly
   that version (`exact_versions`), never "latest"; `require-signed` then verifies that version.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from utility.errors import EventRefused, Forbidden, PayloadTooLarge, Unauthorized, UtilityError

MAX_EVENT_BYTES = 16 * 1024
DEFAULT_WINDOW = 600.0
DEFAULT_SKEW = 30.0
EVENT_FIELDS = frozenset({"repository", "version", "tag", "commit", "signer", "id", "timestamp"})
_ID = re.compile(r"[0-9a-f]{16,128}")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
MAX_VERSION = 10**9


@dataclass(frozen=True)
class EventRules:
    """How old (`window`) or how far ahead (`skew`) an event's timestamp may be, in seconds."""

    window: float = DEFAULT_WINDOW
    skew: float = DEFAULT_SKEW


def same_repository(a: str, b: str) -> bool:
    """Whether two repository URLs name the same repository (trailing '/' and '.git' ignored)."""

    def norm(url: str) -> str:
        url = url.rstrip("/")
        return url[: -len(".git")] if url.endswith(".git") else url

    return norm(a) == norm(b)


def check_size(content_length: int | None) -> None:
    """Refuse a body without a length or over `MAX_EVENT_BYTES` before it is read."""
    if content_length is None or content_length > MAX_EVENT_BYTES:
        what = "no Content-Length" if content_length is None else f"{content_length} bytes"
        raise PayloadTooLarge(f"publish event body: {what}; at most {MAX_EVENT_BYTES} bytes")


def authenticate(
    body: bytes, header: str | None, secrets: Mapping[str, bytes], fallback: bytes | None
) -> str | None:
    """Which secret signed `body`: a subscribed repository's URL, or None for `fallback`.

    Raises:
        Forbidden: there is no secret to check with at all.
        Unauthorized: no candidate secret produces `header`.
    """
    if not secrets and fallback is None:
        raise Forbidden(
            "publish event from a repository this utility is not subscribed "
            "to, and no global events secret: ignored"
        )
    if not header or not header.startswith("sha256="):
        raise Unauthorized("publish event without X-Collective-Signature: sha256=...")
    given = header.strip().encode()
    candidates: list[tuple[str | None, bytes]] = [*secrets.items()]
    if fallback is not None:
        candidates.append((None, fallback))
    for owner, secret in candidates:
        expected = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(expected, given):
            return owner
    raise Unauthorized("publish event signature does not match: ignored")


def _text(event: dict[str, Any], name: str, pattern: re.Pattern[str] | None = None) -> str:
    value = event[name]
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > 2048:
        raise UtilityError(f"publish event field {name!r} must be a non-empty string")
    if pattern is not None and not pattern.fullmatch(value):
        raise UtilityError(f"publish event field {name!r} is malformed")
    return value


def parse_event(body: bytes) -> dict[str, Any]:
    """The authenticated body as an event, checked field by field (never echoed back)."""
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise UtilityError("publish event is not valid JSON") from None
    if not isinstance(event, dict) or set(event) != EVENT_FIELDS:
        raise UtilityError(f"publish event must have exactly the fields {sorted(EVENT_FIELDS)}")
    version, stamp = event["version"], event["timestamp"]
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise UtilityError(f"publish event field 'version' must be an integer 1..{MAX_VERSION}")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        raise UtilityError("publish event field 'timestamp' must be seconds since the epoch")
    if event["signer"] is not None:
        _text(event, "signer")
    return {
        "repository": _text(event, "repository").rstrip("/"),
        "version": version,
        "tag": _text(event, "tag"),
        "commit": _text(event, "commit", _COMMIT),
        "signer": event["signer"],
        "id": _text(event, "id", _ID),
        "timestamp": float(stamp),
    }


def check_source(event: dict[str, Any], owner: str | None, subscribed: Mapping[str, bytes]) -> None:
    """The event must name the repository whose secret signed it (global: an unsubscribed one)."""
    named = event["repository"]
    if owner is not None and same_repository(owner, named):
        return
    if any(same_repository(url, named) for url in subscribed):
        raise Unauthorized(
            "publish event names a subscribed repository but is signed with another secret"
        )
    if owner is not None:
        raise Forbidden("publish event names a repository this utility is not subscribed to")


def check_fresh(event: dict[str, Any], rules: EventRules, now: float | None = None) -> None:
    """Refuse an event older than the window or ahead of the clock by more than the skew."""
    now = time.time() if now is None else now
    age = now - event["timestamp"]
    if age > rules.window:
        raise EventRefused(f"publish event is {age:.0f} s old (window {rules.window:.0f} s)")
    if -age > rules.skew:
        raise EventRefused(f"publish event is {-age:.0f} s in the future (skew {rules.skew:.0f} s)")


def check_once(event: dict[str, Any], store: Any, rules: EventRules) -> None:
    """Remember the event's id for the window; refuse it when already remembered (a replay)."""
    horizon = time.time() - rules.window - rules.skew
    if not store.remember_event(event["id"], event["timestamp"], horizon):
        raise EventRefused(f"publish event {event['id']} was already received: replay ignored")


def check_version(event: dict[str, Any]) -> None:
    """The named version must exist at the repository, with the commit the event names."""
    from reposerver.client import open_repository
    from reposerver.errors import RepositoryError

    try:
        commit = open_repository(event["repository"]).commit(event["version"])
    except (RepositoryError, OSError, ValueError, KeyError):
        raise EventRefused(
            f"publish event names version {event['version']}, which the repository "
            "does not have (or cannot be reached): nothing scheduled"
        ) from None
    if commit != event["commit"]:
        raise EventRefused(
            f"publish event names commit {event['commit']} for version {event['version']}, "
            "the repository has another: nothing scheduled"
        )


_EXACT: ContextVar[Mapping[str, str] | None] = ContextVar("exact_versions", default=None)


@contextmanager
def exact_versions(versions: Mapping[str, str]) -> Iterator[None]:
    """While inside, unpinned imports of these repositories resolve to these versions."""
    token = _EXACT.set(dict(versions))
    try:
        yield
    finally:
        _EXACT.reset(token)


class ExactResolver:
    """Wraps a CVL resolver: an unpinned import of a repository in `exact_versions` gets that
    version instead of the latest (an event's update installs what the event named)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def fetch(
        self, url: str, cvl: str, version: str | None, base_dir: str | None
    ) -> tuple[str, str]:
        exact_map = _EXACT.get()
        if version is None and exact_map:
            from cvl.resolver import canonical_url

            where = canonical_url(url, base_dir)
            for repository, exact in exact_map.items():
                if same_repository(repository, where):
                    version = exact
        return self.inner.fetch(url, cvl, version, base_dir)  # type: ignore[no-any-return]


def accept_event(
    body: bytes,
    header: str | None,
    subscribed: Mapping[str, bytes],
    fallback: bytes | None,
    store: Any,
    rules: EventRules,
) -> dict[str, Any]:
    """Rules 2-4 of the module docstring, in order; the event when all hold."""
    owner = authenticate(body, header, subscribed, fallback)
    event = parse_event(body)
    check_source(event, owner, subscribed)
    check_fresh(event, rules)
    check_once(event, store, rules)
    return event
