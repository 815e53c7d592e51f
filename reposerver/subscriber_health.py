"""Whether a subscriber still answers: failures counted per URL, and suspension of the gone.

Every delivery attempt (`reposerver.events.deliver`) records its outcome in the repository's
`logs/subscribers.json`. A success clears the record. A subscriber that has failed every attempt
for at least `suspend_after` seconds and at least `SUSPEND_MIN_FAILURES` times is *suspended*:
its current delivery stops retrying, and later pushes skip it (one `skipped` line in
`logs/deliveries.log` each) instead of retrying for ever. The publisher sees the state in
`GET /NAME/subscribers` (`status`: `active`, `failing` or `suspended`, with the failure count,
since when, and the last error); subscribing the URL again (`POST`) or removing it clears it.

The file is shared by the server and detached delivery processes: every change holds an
exclusive `flock` on `logs/subscribers.lock` and replaces the file atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HEALTH_FILE = "subscribers.json"
DEFAULT_SUSPEND_AFTER = 24 * 3600.0
"""Seconds of nothing but failures before a subscriber is suspended (server setting
`subscriber_suspend_after_seconds`)."""
SUSPEND_MIN_FAILURES = 3
"""Failed attempts a subscriber needs at least before it can be suspended."""


def health_path(logs: Path) -> Path:
    """The health file in a repository's `logs` directory."""
    return logs / HEALTH_FILE


@contextmanager
def _locked(path: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """The records of `path`, read and written back under an exclusive lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = read(path)
        before = json.dumps(records, sort_keys=True)
        yield records
        if json.dumps(records, sort_keys=True) != before:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, path)


def read(path: Path) -> dict[str, dict[str, Any]]:
    """URL -> record (`failures`, `failing_since`, `last_error`, `suspended_at`); a missing or
    damaged file reads as every subscriber healthy."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)}


def record(path: Path, url: str, ok: bool, error: str, now: float, suspend_after: float) -> bool:
    """Record one delivery attempt to `url`; True when the subscriber is (now) suspended."""
    with _locked(path) as records:
        if ok:
            records.pop(url, None)
            return False
        entry = records.setdefault(url, {"failures": 0, "failing_since": now})
        entry["failures"] = int(entry.get("failures", 0)) + 1
        entry["last_error"] = error[:300]
        entry["last_attempt"] = now
        since = float(entry.get("failing_since", now))
        if (
            entry.get("suspended_at") is None
            and entry["failures"] >= SUSPEND_MIN_FAILURES
            and now - since >= suspend_after
        ):
            entry["suspended_at"] = now
        return entry.get("suspended_at") is not None


def suspended(path: Path) -> set[str]:
    """The URLs of suspended subscribers."""
    return {url for url, r in read(path).items() if r.get("suspended_at") is not None}


def clear(path: Path, url: str) -> None:
    """Forget what is known about `url` (it subscribed again, or was removed)."""
    with _locked(path) as records:
        records.pop(url, None)


def describe(path: Path) -> Callable[[str], dict[str, Any]]:
    """A function giving each URL's state for the listing: `status` and, unless active, the
    failure count, `failing_since`, `last_error` and `suspended_at` (Unix seconds)."""
    records = read(path)

    def state(url: str) -> dict[str, Any]:
        entry = records.get(url)
        if entry is None:
            return {"status": "active"}
        status = "suspended" if entry.get("suspended_at") is not None else "failing"
        keys = ("failures", "failing_since", "last_error", "suspended_at")
        return {"status": status, **{k: entry.get(k) for k in keys}}

    return state
