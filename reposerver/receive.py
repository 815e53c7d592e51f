"""What happens around a ref update, shared by the HTTP receive path, git hooks and publish.

`check_and_update` is the locked critical section (check every update, then write the refs);
`announce_refs` turns accepted version tags into publish events for the subscribers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from reposerver import events
from reposerver.checks import ZERO, RefUpdate
from reposerver.names import version_of_ref
from reposerver.repo_config import Subscriber
from reposerver.repository import Repository


def repository_url(repository: Repository, public_url: str | None) -> str:
    """The URL subscribers see for this repository (`file://` when there is no server)."""
    if public_url:
        return public_url.rstrip("/") + "/" + repository.name
    return repository.path.resolve().as_uri()


def announce_refs(
    repository: Repository,
    updates: Iterable[RefUpdate],
    public_url: str | None = None,
    extra_subscribers: Sequence[Subscriber] = (),
    delays: Sequence[float] = events.DEFAULT_DELAYS,
    allowed_networks: Sequence[str] | None = None,
    suspend_after: float | None = None,
) -> Any:
    """Send one event per version tag created by `updates` to every subscriber, in background.

    `allowed_networks` (subscriber addresses the administrator allows, see `reposerver.egress`)
    defaults to the server config's, read from `COLLECTIVE_REPOSERVER_CONFIG` when that is set
    (a local publish or git hook has no running server), else none; so does `suspend_after`
    (`subscriber_suspend_after_seconds`, see `reposerver.subscriber_health`).
    """
    found = []
    for update in updates:
        number = version_of_ref(update.ref)
        if number is None or update.new == ZERO:
            continue
        info = repository.version(number)
        found.append(
            events.event(repository_url(repository, public_url), number, info.commit, info.signer)
        )
    subscribers = list(repository.config.subscribers) + list(extra_subscribers)
    log_path = repository.path / "logs" / "deliveries.log"
    if allowed_networks is None:
        allowed_networks = configured_networks()
    if suspend_after is None:
        suspend_after = configured_suspend_after()
    return events.announce(found, subscribers, log_path, delays, allowed_networks, suspend_after)


def _configured(key: str) -> object:
    """`key` of the server config file named in the environment (None when unset)."""
    import json
    import os
    from pathlib import Path

    from reposerver.settings import CONFIG_ENV

    path = os.environ.get(CONFIG_ENV)
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def configured_suspend_after() -> float:
    """`subscriber_suspend_after_seconds` of the server config named in the environment."""
    from reposerver.subscriber_health import DEFAULT_SUSPEND_AFTER

    value = _configured("subscriber_suspend_after_seconds")
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else DEFAULT_SUSPEND_AFTER  # type: ignore[arg-type]


def configured_networks() -> tuple[str, ...]:
    """`allowed_subscriber_networks` of the server config file named in the environment."""
    import json
    import os
    from pathlib import Path

    from reposerver.settings import CONFIG_ENV

    path = os.environ.get(CONFIG_ENV)
    if not path:
        return ()
    try:
        value = json.loads(Path(path).read_text()).get("allowed_subscriber_networks", [])
    except (OSError, ValueError, AttributeError):
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else ()
