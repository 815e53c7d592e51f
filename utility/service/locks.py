"""One lock per CVL file, so two operations on one VAP never interleave."""

from __future__ import annotations

import threading


class VapLocks:
    """Locks by CVL path, created on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def for_path(self, cvl_path: str) -> threading.Lock:
        """The lock of `cvl_path`."""
        with self._guard:
            return self._locks.setdefault(cvl_path, threading.Lock())
