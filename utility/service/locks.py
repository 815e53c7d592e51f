"""One lock per CVL file, so two operations on one VAP never interleave."""

from __future__ import annotations

import threading


class VapLocks:
    """Locks by VAP name, created on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def for_path(self, name: str) -> threading.Lock:
        """The lock of VAP `name` (`owner/short name`)."""
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())
