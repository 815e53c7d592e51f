"""The daemon: `cui utility serve`, the API under gunicorn, background work in one process.

Start-up, in the gunicorn master: take the state directory's lock (`daemon_lock`), check the
database (`db_check`), check the transport (`tls.check_listen`), bind the Unix socket (0600:
gunicorn binds it under umask 0177) or the TCP port (with TLS when `--tls-cert/--tls-key`).
Then one gunicorn worker (gthread: requests in threads) builds the cluster manager after the
fork, reconciles with the hosts, starts polling, and serves. So reconcile, automatic updates
and polling run in exactly one process; a worker that dies is replaced and reconciles again.
SIGTERM stops the master, which stops the worker (and removes the Unix socket); SIGKILL of the
master kills the worker too (PR_SET_PDEATHSIG), as a crash of the daemon should.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from utility.adapters import killpoint
from utility.adapters.daemon_lock import hold_state_lock
from utility.adapters.db_check import check_database, migrate
from utility.adapters.event_guard import EventRules
from utility.adapters.libvirt_host import start_event_loop
from utility.adapters.tls import check_listen, split_listen
from utility.core.backups import DEFAULT_INTERVAL as DEFAULT_BACKUP_INTERVAL
from utility.service.manager import STATE_DIR_MODE, ClusterManager
from utility.web.api import EVENTS_PATH, SOCKET_NAME, create_app

THREADS = 16
"""Concurrent requests of the one worker (streamed starts hold one each)."""


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """gunicorn run in-process with `options`; `build` makes the WSGI app in the worker."""

    def __init__(self, options: dict[str, Any], build: Callable[[], Any]) -> None:
        self.options = options
        self.build = build
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.build()


DEFAULT_CHECK_INTERVAL = 10.0


def _die_with_master() -> None:
    """Ask Linux to SIGKILL this worker when the gunicorn master dies (`kill -9` of the daemon
    must end the whole daemon, not leave a worker finishing a start and holding the lock)."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the master died before the request took effect
        os._exit(1)


def _reconcile(manager: ClusterManager, announce: Callable[[str], None]) -> None:
    report = manager.reconcile()
    manager.store.event(
        None,
        "reconcile",
        f"process {os.getpid()}: {len(report['rolled_back'])} rolled back, "
        f"{len(report['crashed'])} crashed, {len(report['pending'])} pending stops, "
        f"{len(report['unowned'])} unowned",
    )
    for path in report["rolled_back"]:
        announce(f"reconcile: {path} was interrupted mid-operation; rolled back to stopped")
    for item in report["crashed"]:
        announce(f"reconcile: {item} is no longer running (marked crashed)")
    for path in report["recovered"]:
        announce(f"reconcile: {path} was interrupted mid-operation; reconciled per component")
    for path in report["pending"]:
        announce(f"reconcile: stop of {path} waits for an unreachable host (allocations held)")
    for item in report["unowned"]:
        announce(
            f"reconcile: domain {item['domain']} on {item['host']} belongs to no VAP (left running)"
        )


def serve(
    state_dir: Path,
    listen: str | None,
    manager_factory: Callable[[Path], ClusterManager] = ClusterManager,
    announce: Callable[[str], None] = lambda line: print(line, flush=True),
    events_secret: bytes | None = None,
    poll_interval: float | None = None,
    reinitialise: bool = False,
    tls: tuple[Path, Path] | None = None,
    event_rules: EventRules | None = None,
    check_interval: float = DEFAULT_CHECK_INTERVAL,
    rebalance_interval: float = 0.0,
    backup_interval: float = DEFAULT_BACKUP_INTERVAL,
) -> None:
    """Run the daemon until SIGTERM/SIGINT (see the module docstring).

    Args:
        state_dir: the state directory (created 0711: see `manager_base.STATE_DIR_MODE`).
        listen: None for the Unix socket `state_dir/utility.sock`; `HOST:PORT` for TCP.
        tls: (certificate, key) PEM files for https; required unless `listen` is loopback.
        check_interval: seconds between the watchdog's checks of every VM (libvirt lifecycle
            events wake it sooner); 0 turns the watchdog off.
        backup_interval: seconds between backups of every running VM's data disks; 0: off.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    os.chmod(state_dir, STATE_DIR_MODE)
    if listen is not None:
        host, port = split_listen(listen)
        check_listen(host, *(tls or (None, None)))
    lock = hold_state_lock(state_dir)
    check_database(state_dir, reinitialise)
    scheme = "https" if tls else "http"
    live: dict[str, Any] = {}

    def build() -> Any:
        """In the worker, after the fork: the manager, reconcile, polling, the app."""
        _die_with_master()
        start_event_loop()  # before any connection opens, so each registers for events
        manager = manager_factory(state_dir)
        migrate(manager.store.read())
        _reconcile(manager, announce)
        killpoint.arm(os.getppid())  # tests only (COLLECTIVE_KILL_AT): see `killpoint`
        app = create_app(
            manager,
            require_token=listen is not None,
            events_secret=events_secret,
            event_rules=event_rules,
        )
        live.update(manager=manager, app=app, stopping=threading.Event())
        periodic = (
            ("watchdog", check_interval, manager.watchdog.run_forever),
            ("backups", backup_interval, manager.backups.run_forever),
            ("rebalance", rebalance_interval, manager.mover.rebalance_forever),
        )
        for name, interval, run_forever in periodic:  # each off at 0
            if interval > 0:
                threading.Thread(
                    target=run_forever, args=(interval, live["stopping"]), daemon=True, name=name
                ).start()
        if poll_interval:
            threading.Thread(
                target=app.config["AUTO_UPDATER"].poll_forever,
                args=(poll_interval, live["stopping"]),
                daemon=True,
                name="poll",
            ).start()
        return app

    def ready(worker: Any) -> None:
        if listen is None:
            where = f"unix://{state_dir / SOCKET_NAME}"
        else:
            bound = worker.sockets[0].getsockname()
            where = f"{scheme}://{listen.rpartition(':')[0] or '127.0.0.1'}:{bound[1]}"
            live["app"].config["EVENTS_URL"] = where + EVENTS_PATH
        announce(f"cluster manager listening on {where} (state {state_dir})")

    def worker_exit(_server: Any, _worker: Any) -> None:
        if "manager" in live:
            live["stopping"].set()
            live["manager"].watchdog.wake.set()
            live["manager"].close()

    options: dict[str, Any] = {
        "bind": [f"unix:{state_dir / SOCKET_NAME}" if listen is None else f"{host}:{port}"],
        "workers": 1,
        "worker_class": "gthread",
        "threads": THREADS,
        "umask": 0o177,
        "timeout": 0,  # reconcile and long starts must not get the worker killed
        "graceful_timeout": 10,
        "accesslog": None,
        "loglevel": "warning",
        "post_worker_init": ready,
        "worker_exit": worker_exit,
        "proc_name": "collective-utility",
    }
    if tls:
        options.update(certfile=str(tls[0]), keyfile=str(tls[1]))
    try:
        _Gunicorn(options, build).run()
    finally:
        lock.close()
        sys.stdout.flush()
