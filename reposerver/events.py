"""Publish events: a JSON message per new version, POSTed to every subscriber, HMAC-signed.

`announce` never blocks the push and never fails it: it hands the events and the subscribers'
secrets (through a pipe, never a file) to a detached `python -m reposerver.events` process,
which POSTs each event with `X-Collective-Signature: sha256=<HMAC-SHA256 of the body>`, retries
with exponential backoff, and appends one JSON line per attempt to the repository's
`logs/deliveries.log`. Each attempt's outcome also goes to `logs/subscribers.json`
(`reposerver.subscriber_health`): a subscriber that only failed for `suspend_after` seconds is
suspended, its delivery stops, and later announcements skip it until it subscribes again.

The signed body carries a random event `id` and the `time` it was made (Unix seconds), so a
receiver can refuse a replayed or stale event; its `repository` URL is the server's configured
public URL (or a trusted host), never a pusher's Host header. Each POST goes to an address
checked right before it (`reposerver.egress`): no loopback, link-local, metadata, unspecified
or multicast address unless the administrator allowed its network; no redirects.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import tenacity

from reposerver import subscriber_health
from reposerver.repo_config import Subscriber

SIGNATURE_HEADER = "X-Collective-Signature"
DEFAULT_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)


def event(repository_url: str, number: int, commit: str, signer: str | None) -> dict[str, object]:
    """The event announcing version `number` (the README's contract): a random `id` and the
    `timestamp` let receivers refuse replays and stale events."""
    return {
        "repository": repository_url,
        "version": number,
        "tag": f"v{number}",
        "commit": commit,
        "signer": signer,
        "id": secrets.token_hex(16),
        "timestamp": time.time(),
    }


def signature(body: bytes, secret: bytes) -> str:
    """The header value that proves `body` came from a holder of `secret`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def announce(
    events: Sequence[dict[str, object]],
    subscribers: Iterable[Subscriber],
    log_path: Path,
    delays: Sequence[float] = DEFAULT_DELAYS,
    allowed_networks: Sequence[str] = (),
    suspend_after: float = subscriber_health.DEFAULT_SUSPEND_AFTER,
) -> subprocess.Popen[bytes] | None:
    """Start background delivery of `events` to `subscribers` (suspended ones are skipped);
    return the process (or None)."""
    targets = []
    health = subscriber_health.health_path(log_path.parent)
    gone = subscriber_health.suspended(health)
    for sub in subscribers:
        if sub.url in gone:
            _log(log_path, {"url": sub.url, "skipped": "suspended: it stopped answering"})
            continue
        try:
            secret = sub.resolve_secret().decode()
        except Exception as exc:  # noqa: BLE001 - a misconfigured subscriber must not fail a push
            _log(log_path, {"url": sub.url, "error": str(exc)})
            continue
        targets.append({"url": sub.url, "secret": secret})
    if not events or not targets:
        return None
    payload = json.dumps(
        {
            "events": list(events),
            "targets": targets,
            "delays": list(delays),
            "log": str(log_path),
            "allowed_networks": list(allowed_networks),
            "suspend_after": suspend_after,
        }
    ).encode()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reposerver.events"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(payload)
    proc.stdin.close()
    return proc


def _log(log_path: Path, record: dict[str, object]) -> None:
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(json.dumps(record) + "\n")


class _NotDelivered(Exception):
    """One attempt that got no 2xx answer (retried by tenacity)."""


class _Suspended(Exception):
    """The subscriber failed for too long: no more attempts (not retried)."""


def deliver(
    url: str,
    secret: bytes,
    body: bytes,
    delays: Sequence[float],
    log_path: Path,
    allowed_networks: Sequence[str] = (),
    suspend_after: float = subscriber_health.DEFAULT_SUSPEND_AFTER,
) -> bool:
    """POST `body` to `url` until a 2xx answer or the retries run out; log every attempt.

    tenacity paces the retries (`delays` between attempts). Each attempt goes through
    `egress.pinned_post`, which resolves and checks the address again (DNS rebinding), so a
    refused address ends the delivery at once instead of being retried. Each outcome is
    recorded in the subscriber's health; once it is suspended the delivery stops.
    """
    from reposerver.egress import pinned_post
    from reposerver.errors import BadRequest

    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(body, secret)}
    version = json.loads(body).get("version")
    attempts = iter(range(1, len(delays) + 2))

    def attempt() -> None:
        number = next(attempts)
        try:
            status: object = pinned_post(url, body, headers, allowed_networks)
        except OSError as exc:
            status = f"{type(exc).__name__}"
        ok = isinstance(status, int) and 200 <= status < 300
        record = {"url": url, "version": version, "attempt": number, "status": status}
        _log(log_path, {**record, "delivered": ok})
        health = subscriber_health.health_path(log_path.parent)
        if subscriber_health.record(health, url, ok, str(status), time.time(), suspend_after):
            _log(log_path, {"url": url, "version": version, "suspended": True})
            raise _Suspended(url)
        if not ok:
            raise _NotDelivered(str(status))

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(len(delays) + 1),
        wait=tenacity.wait_chain(*(tenacity.wait_fixed(d) for d in delays))
        if delays
        else tenacity.wait_none(),
        retry=tenacity.retry_if_exception_type(_NotDelivered),
        reraise=True,
    )
    try:
        retrying(attempt)
    except BadRequest as exc:
        _log(log_path, {"url": url, "version": version, "refused": str(exc)})
        return False
    except (_NotDelivered, _Suspended):
        return False
    return True


def _deliver_in_order(target: dict[str, str], payload: dict[str, object]) -> None:
    events = payload["events"]
    assert isinstance(events, list)
    for item in events:
        body = json.dumps(item, sort_keys=True).encode()
        delays = payload["delays"]
        assert isinstance(delays, list)
        allowed = payload.get("allowed_networks", [])
        assert isinstance(allowed, list)
        log_path = Path(str(payload["log"]))
        suspend_after = float(str(payload.get("suspend_after", 0.0)))
        if target["url"] in subscriber_health.suspended(
            subscriber_health.health_path(log_path.parent)
        ):
            return  # suspended while an earlier event was being delivered
        deliver(
            target["url"], target["secret"].encode(), body, delays, log_path, allowed, suspend_after
        )


def _main() -> None:
    import threading

    payload = json.loads(sys.stdin.buffer.read())
    threads = [
        threading.Thread(target=_deliver_in_order, args=(t, payload)) for t in payload["targets"]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    _main()
