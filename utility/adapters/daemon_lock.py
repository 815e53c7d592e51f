"""One daemon per state directory: an exclusive `flock` on `utility.lock`, held for life.

A second daemon on the same directory fails before it touches the socket, the database or the
hosts, and names the holder's PID (written into the lock file by the holder). The kernel drops
the lock when the holder exits, however it exits (SIGKILL included), so no stale lock remains.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from utility.errors import DaemonRunning

LOCK_NAME = "utility.lock"


def _holder(lock: IO[str]) -> str:
    """The PID the holder wrote, or 'unknown' (it may be between open and write)."""
    lock.seek(0)
    text = lock.read(32).strip()
    return text if text.isdigit() else "unknown"


def hold_state_lock(state_dir: Path) -> IO[str]:
    """Take the state directory's lock for this process; keep the returned file open.

    Raises:
        DaemonRunning: another process holds it (its PID is in the message).
    """
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    lock = os.fdopen(fd, "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(lock)
        lock.close()
        raise DaemonRunning(
            f"another utility daemon (PID {pid}) already serves state directory {state_dir}; "
            "stop it first or use another --state"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
