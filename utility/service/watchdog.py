"""Dead VMs are seen and restarted; stops held up by an unreachable host finish.

`Watchdog.check` runs periodically (and at once when libvirt reports a domain stopped): a VM
recorded `running` whose domain no longer runs becomes `crashed` (an event and a history row);
a crashed VM of a VAP whose restart policy is `always` is booted again on its host, with
exponential backoff and at most `limit` attempts per `window` (then it stays crashed and the
history says so). A VAP left `stopping` because a host did not answer is stopped for good once
every host it used answers again. A VAP being started, stopped or updated is skipped (its lock
is held), so the watchdog never mistakes the utility's own stop for a crash.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from utility.adapters.store import VapRow
from utility.errors import UtilityError
from utility.service.lifecycle import Lifecycle, Parts

if TYPE_CHECKING:
    from utility.service.failover import HostMonitor


@dataclass
class Backoff:
    """Restart pacing: `base * 2**n` seconds after the n-th attempt (capped), `limit` attempts
    per `window` seconds."""

    base: float = 1.0
    cap: float = 60.0
    limit: int = 5
    window: float = 600.0
    attempts: dict[tuple[int, str], list[float]] = field(default_factory=dict)

    def recent(self, key: tuple[int, str], now: float) -> list[float]:
        """The attempts for `key` inside the window ending at `now`."""
        kept = [t for t in self.attempts.get(key, []) if now - t < self.window]
        self.attempts[key] = kept
        return kept

    def due(self, key: tuple[int, str], now: float) -> bool | None:
        """True if a restart may happen now, False if not yet, None if the limit is reached."""
        recent = self.recent(key, now)
        if len(recent) >= self.limit:
            return None
        if not recent:
            return True
        return now >= recent[-1] + min(self.cap, self.base * 2 ** (len(recent) - 1))

    def record(self, key: tuple[int, str], now: float) -> None:
        """Count one restart attempt."""
        self.attempts.setdefault(key, []).append(now)


class Watchdog:
    """Crash detection, restarts with backoff, and completion of pending stops.

    Args:
        parts: the cluster manager's parts.
        lifecycle: finishes pending stops.
        clock: monotonic seconds for the backoff (tests pass their own).
        backoff: the restart pacing.
    """

    def __init__(
        self,
        parts: Parts,
        lifecycle: Lifecycle,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self.parts = parts
        self.store = parts.store
        self.lifecycle = lifecycle
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.wake = threading.Event()
        self.gave_up: set[tuple[int, str]] = set()
        self.monitor: HostMonitor | None = None

    def domain_stopped(self, _host: str, _domain: str) -> None:
        """A libvirt lifecycle event: check soon (from the event loop thread; never blocks)."""
        self.wake.set()

    def run_forever(self, interval: float, stopping: threading.Event) -> None:
        """Check every `interval` seconds, or as soon as an event arrives, until `stopping`."""
        while not stopping.is_set():
            self.wake.wait(interval)
            self.wake.clear()
            if stopping.is_set():
                return
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - a failed round must not end the watchdog
                self.store.event(None, "watchdog", f"check failed: {type(exc).__name__}: {exc}")

    def check(self) -> dict[str, list[str]]:
        """One round: host health first (`failover.HostMonitor`: failed hosts, lost VMs
        restarted elsewhere, returning hosts fenced), then mark crashed VMs, restart what is
        due, finish pending stops."""
        report: dict[str, list[str]] = {
            "crashed": [],
            "restarted": [],
            "gave_up": [],
            "waiting": [],
            "stopped": [],
        }
        if self.monitor is not None:
            report.update({k: v for k, v in self.monitor.check().items() if v})
        for vap in self.store.vaps(("running", "stopping")):
            lock = self.parts.locks.for_path(vap.name)
            if not lock.acquire(blocking=False):
                continue  # a start, stop or update is under way: its own steps decide
            try:
                if vap.status == "stopping":
                    if self.lifecycle.finish_stop(vap):
                        report["stopped"].append(vap.name)
                    continue
                self._see_crashes(vap, report["crashed"])
                self._restart_due(vap, report)
            finally:
                lock.release()
        return report

    def _see_crashes(self, vap: VapRow, crashed: list[str]) -> None:
        for row in self.store.vms(vap.id):
            if row.state != "running":
                continue
            try:
                info = self.parts.hosts.host(row.host).domain(row.domain)
            except UtilityError:
                continue  # an unreachable host says nothing about its VMs
            if info is not None and info.running:
                continue
            self.store.set_vm(vap.id, row.path, "crashed")
            self.gave_up.discard((vap.id, row.path))
            text = f"{row.path}: domain {row.domain} on {row.host} stopped on its own"
            self.store.event(vap.id, "crashed", text)
            self.store.add_history(vap.name, "crash", [f"✗ {row.path}"], {}, text)
            crashed.append(f"{vap.name}:{row.path}")

    def _restart_due(self, vap: VapRow, report: dict[str, list[str]]) -> None:
        if vap.state is None or self.store.restart_policy(vap.id) != "always":
            return
        for row in self.store.vms(vap.id):
            vm = vap.state.vm(row.path)
            key = (vap.id, row.path)
            if row.state != "crashed" or vm is None or key in self.gave_up:
                continue
            if self.store.secret_keys(vap.id):
                full = self.parts.secrets.unmask(vap.id, vm)
                if full is None:
                    self._give_up(
                        vap,
                        row.path,
                        "its sensitive values were held only in memory (the "
                        "daemon restarted since)",
                    )
                    report["gave_up"].append(f"{vap.name}:{row.path}")
                    continue
                vm = full
            now = self.clock()
            due = self.backoff.due(key, now)
            if due is None:
                self._give_up(vap, row.path, f"{self.backoff.limit} restarts failed")
                report["gave_up"].append(f"{vap.name}:{row.path}")
                continue
            if not due:
                continue
            if not self._room(vm.host, vm.memory):
                report["waiting"].append(f"{vap.name}:{row.path}")
                continue  # its slot was given away meanwhile: no overcommit, try next round
            self.backoff.record(key, now)
            attempt = len(self.backoff.recent(key, now))
            try:
                self.parts.applier.restart(vap.id, vm)
            except UtilityError as exc:
                self.store.event(vap.id, "restart", f"{row.path}: restart {attempt} failed: {exc}")
                continue
            text = f"{row.path} restarted on {vm.host} (attempt {attempt})"
            self.store.event(vap.id, "restart", text)
            self.store.add_history(vap.name, "restart", [f"↻ {row.path}"], {}, text)
            report["restarted"].append(f"{vap.name}:{row.path}")

    def _room(self, host: str, memory: int) -> bool:
        """Whether `host` has room for one more VM of `memory` bytes (crashed VMs hold none)."""
        used, count = self.store.usage().get(host, (0, 0))
        row = next((h for h in self.store.hosts() if h.name == host), None)
        health = self.store.host_health().get(host)
        if health is not None and health.health != "up":
            return False  # failed, suspect or being fenced: nothing boots there
        return row is not None and used + memory <= row.memory and count + 1 <= row.max_vms

    def _give_up(self, vap: VapRow, path: str, why: str) -> None:
        self.gave_up.add((vap.id, path))
        text = f"{path} stays crashed: {why}"
        self.store.event(vap.id, "restart", text)
        self.store.add_history(vap.name, "restart", [], {}, text)

    def forget(self, vap_id: int) -> None:
        """Forget the restart attempts of VAP `vap_id` (it starts again under the same id: a
        new run begins with a clean slate)."""
        self.gave_up = {key for key in self.gave_up if key[0] != vap_id}
        for key in [k for k in self.backoff.attempts if k[0] == vap_id]:
            del self.backoff.attempts[key]

    def restarts_by_vap(self) -> dict[int, dict[str, int]]:
        """Restart attempts inside the current window, per VAP id then component path."""
        now = self.clock()
        out: dict[int, dict[str, int]] = {}
        for vid, path in list(self.backoff.attempts):
            out.setdefault(vid, {})[path] = len(self.backoff.recent((vid, path), now))
        return out

    def restarts(self, vap_id: int) -> dict[str, Any]:
        """Restart attempts per component path inside the current window (for status)."""
        now = self.clock()
        return {
            path: len(self.backoff.recent((vid, path), now))
            for (vid, path) in list(self.backoff.attempts)
            if vid == vap_id
        }
