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
) -> Any:
    """Send one event per version tag created by `updates` to every subscriber, in background."""
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
    return events.announce(found, subscribers, repository.path / "logs" / "deliveries.log", delays)
