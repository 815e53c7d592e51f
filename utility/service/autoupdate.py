"""Automatic updates: publish events from repository servers; polling where events cannot come.

An event (README contract: JSON `{"repository", "version", "tag", "commit", "signer", "id",
"timestamp"}` with `X-Collective-Signature: sha256=HMAC-SHA256(body, shared secret)`) is accepted
only by the rules of `utility.adapters.event_guard` (signature first, fresh, once, an existing
version).
Every running VAP with an unpinned import of that repository is then updated to exactly the
version named, for just the components whose image comes from it, through the same planner as
`cui update`.
Bursts coalesce (one pending update per VAP, started after a short delay), updates of one VAP
never overlap (the cluster manager's per-VAP lock), and a VAP being started or stopped is updated
after (same lock). Polling compares each unpinned import's latest version with the running one
and schedules the same update, with trigger "poll".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from utility.adapters.event_guard import check_version, exact_versions
from utility.errors import UtilityError
from utility.service.manager import Caller, ClusterManager
from utility.service.policy import AUTO_UPDATE

SYSTEM = Caller(AUTO_UPDATE, "admin")
COALESCE_SECONDS = 0.2


def _same_repo(a: str, b: str) -> bool:
    def norm(u: str) -> str:
        u = u.rstrip("/")
        return u[: -len(".git")] if u.endswith(".git") else u

    return norm(a) == norm(b)


class AutoUpdater:
    """Schedules automatic updates on a cluster manager."""

    def __init__(self, manager: ClusterManager) -> None:
        self.manager = manager
        self._pending: set[tuple[str, str | None]] = set()
        self._versions: dict[tuple[str, str | None], dict[str, str]] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def affected(self, repository: str) -> list[tuple[str, str | None]]:
        """(CVL path, component or None for the whole VAP) of running VAPs tracking `repository`."""
        found: list[tuple[str, str | None]] = []
        for vap in self.manager.store.vaps(("running",)):
            state = vap.state
            if state is None:
                continue
            tracked = [
                i
                for i in state.imports
                if _same_repo(str(i.get("url", "")), repository) and not i.get("pinned")
            ]
            if not tracked:
                continue
            users = [
                vm.path
                for vm in state.vms
                if _same_repo(str((vm.origin or {}).get("url", "")), repository)
            ]
            found += [(vap.name, p) for p in users] if users else [(vap.name, None)]
        return found

    def on_event(self, event: dict[str, Any]) -> list[str]:
        """Schedule the updates a verified publish event calls for; returns what was scheduled."""
        targets = self.affected(event["repository"])
        if targets:
            check_version(event)  # exists, with the commit named; else nothing is scheduled
        self.schedule(targets, "push", {event["repository"]: str(event["version"])})
        return [f"{path}{':' + comp if comp else ''}" for path, comp in targets]

    def schedule(
        self,
        targets: Iterable[tuple[str, str | None]],
        trigger: str,
        versions: dict[str, str] | None = None,
    ) -> None:
        """Start one coalesced update per target not already pending; `versions` (repository ->
        version) are what the update installs of those repositories (the highest named wins)."""
        for target in targets:
            with self._lock:
                wanted = self._versions.setdefault(target, {})
                for repository, version in (versions or {}).items():
                    wanted[repository] = max(version, wanted.get(repository, version), key=int)
                if target in self._pending:
                    continue
                self._pending.add(target)
            thread = threading.Thread(
                target=self._run,
                args=(target, trigger),
                daemon=True,
                name=f"auto-update {target[0]}",
            )
            self._threads.append(thread)
            thread.start()

    def _run(self, target: tuple[str, str | None], trigger: str) -> None:
        time.sleep(COALESCE_SECONDS)
        with self._lock:
            self._pending.discard(target)
            versions = self._versions.pop(target, {})
        path, component = target
        self.manager.store.event(
            None,
            "auto-update",
            f"{trigger} update of {path}{':' + component if component else ''} starting",
        )
        try:
            with exact_versions(versions):
                self.manager.update(SYSTEM, path, component, trigger=trigger)
        except UtilityError as exc:
            self.manager.record_refusal(path, trigger, f"refused: {exc}")

    def wait(self, timeout: float = 30.0) -> None:
        """Wait for scheduled updates (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def poll_once(self) -> None:
        """Compare every unpinned import of running VAPs with its repository's latest version."""
        from reposerver.client import open_repository

        latest: dict[str, int] = {}
        targets: list[tuple[str, str | None]] = []
        for vap in self.manager.store.vaps(("running",)):
            for imp in vap.state.imports if vap.state else ():
                url = str(imp.get("url", ""))
                if imp.get("pinned") or not str(imp.get("version", "")).isdigit():
                    continue
                try:
                    if url not in latest:
                        latest[url] = int(open_repository(url).latest())
                except Exception:  # noqa: BLE001 - an unreachable repository is retried next poll
                    continue
                if latest[url] > int(str(imp["version"])):
                    targets += [t for t in self.affected(url) if t[0] == vap.name]
        self.schedule(targets, "poll")

    def poll_forever(self, interval: float, stop: threading.Event) -> None:
        """`poll_once` every `interval` seconds until `stop` is set."""
        while not stop.wait(interval):
            self.poll_once()
