"""A test-only crash hook: the daemon SIGKILLs itself at the Nth step of its work.

Off unless `COLLECTIVE_KILL_AT` (a step number, 1-based) or `COLLECTIVE_KILL_TRACE` (a file that
gets one line `N STEP` per step) is set in the daemon's environment, and then only once the
daemon's worker called `arm` (after its start-up reconcile), so the same N always names the same
step of the same request. Steps are: each committed store transaction (`commit`), and each
executor action's `begin`, `domain-created` and `done`. Kill tests (tests/integration/
test_utility_kill.py) read the trace of one run, then kill a fresh daemon at chosen steps; the
whole daemon dies (the gunicorn master too, named by `also_kill`), like `kill -9`.

In production neither variable is set: `step` returns at its first test and costs nothing.
"""

from __future__ import annotations

import os
import signal
import threading

ENV_AT = "COLLECTIVE_KILL_AT"
ENV_TRACE = "COLLECTIVE_KILL_TRACE"

_AT = int(os.environ.get(ENV_AT) or 0)
_TRACE = os.environ.get(ENV_TRACE) or None
_lock = threading.Lock()
_state = {"armed": False, "count": 0}
_others: list[int] = []


def enabled() -> bool:
    """Whether the hook is configured at all (tests only)."""
    return bool(_AT or _TRACE)


def arm(*others: int) -> None:
    """Start counting steps; a kill also SIGKILLs the processes `others` (the daemon's master)."""
    if not enabled():
        return
    with _lock:
        _others[:] = list(others)
        _state["armed"] = True


def step(name: str) -> None:
    """One step of work done; the configured Nth kills the daemon on the spot."""
    if not (_AT or _TRACE) or not _state["armed"]:
        return
    with _lock:
        _state["count"] += 1
        number = _state["count"]
        if _TRACE:
            fd = os.open(_TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{number} {name}\n".encode())
            finally:
                os.close(fd)
        if number == _AT:
            for pid in _others:
                os.kill(pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
