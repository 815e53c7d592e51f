"""An update caused by a real publish: a stock `git push` to the repository server under gunicorn,
the utility daemon (`cui utility serve`, subscribed with `cui utility subscribe`) on simulated
hosts running a 6-VM VAN whose every component comes from its own repository on that server.

One component (Mail) gets a new version pushed, three times. Measured per push:
- VMs restarted (from each component's start time in `cui status`): goal exactly 1; the
  baseline is restarting the whole VAN (6).
- control-plane time of the automatic update inside the daemon, from its "auto-update starting"
  event to its history record (re-resolving imports over HTTP, checks, fetching the new disk,
  planning, stopping and starting the VM; no guest boot on test hosts): goal < 0.5 s; baseline:
  a stop plus start of the whole VAN through the same daemon's API, same run.
- time from `git push` returning to the update starting (the post-receive event, HMAC-checked by
  the daemon, 0.2 s burst coalescing included): goal < 2 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bench import Row

if TYPE_CHECKING:
    from utility.adapters.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]
CUI = [sys.executable, "-m", "cui.main"]
COMPONENTS = {"d": "DNS", "h": "DHCP", "l": "LDAP", "m": "Mail", "w": "Web", "f": "Firewall"}
PUSHES = 3


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
        timeout=300,
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:4])}: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def _daemon(state: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if k != "COLLECTIVE_EVENTS_SECRET"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*CUI, "utility", "serve", "--state", str(state), "--listen", f"127.0.0.1:{port}"],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the utility daemon did not start:\n" + log.read_text())
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_history(store: Store, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(store.history()) >= count:
            return
        time.sleep(0.02)
    raise RuntimeError(f"no automatic update recorded within {timeout:.0f} s of the push")


def measure() -> dict[str, list[float]]:
    """Run the scenario; per push: restarted VMs, daemon-side update seconds, push->start."""
    from reposerver.publish import publish
    from reposerver.repository import Repository
    from reposerver.testing import free_port, running_server, sample_appliance, write_pattern
    from utility.adapters.simulation import simulated_host_uri
    from utility.adapters.store import Store
    from utility.client.daemon_client import UtilityClient

    found: dict[str, list[float]] = {"restarted": [], "update": [], "push": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        where = Path(tmp)
        root = where / "root"
        root.mkdir()
        for kind in COMPONENTS.values():
            repo = Repository.create(root / kind)
            publish(repo.path, sample_appliance(where / "src" / kind, kind))
        loopback = {"allowed_subscriber_networks": ["127.0.0.0/8"]}  # the utility's address
        with running_server(root, workers=2, extra=loopback) as server:
            imports = "\n".join(
                f'import {{ url => "{server.url}/{kind}", cvl => "{kind}.cvl" }} {kind};'
                for kind in COMPONENTS.values()
            )
            members = " ".join(
                f'{kind} {path}; {path}.domain = "acme.org";' for path, kind in COMPONENTS.items()
            )
            cvl = where / "user" / "Groupware.cvl"
            cvl.parent.mkdir()
            cvl.write_text(
                f"{imports}\nGroupware extends VANAppliance {{ {members} "
                'vanIF = "f.ethernet0"; }\n'
            )
            state = where / "state"
            token = _run(
                [
                    *CUI,
                    "utility",
                    "token",
                    "add",
                    "bench",
                    "--role",
                    "admin",
                    "--state",
                    str(state),
                ],
                REPO_ROOT,
            ).strip()
            port = free_port()
            with _daemon(state, port, where / "daemon.log"):
                client = UtilityClient(f"http://127.0.0.1:{port}", token)
                client.add_host("h1", simulated_host_uri(where, "h1"), "8G", 16)
                client.add_vlans("100-101")
                client.add_public_ips("192.0.2.10-192.0.2.11")
                client.subscribe(f"{server.url}/Mail", None, (server.user, server.token))
                began = time.perf_counter()
                client.start(str(cvl))
                for _ in range(2):
                    began = time.perf_counter()
                    client.stop(str(cvl))
                    client.start(str(cvl))
                    found["baseline"].append(time.perf_counter() - began)
                work = where / "work"
                _run(["git", "clone", "-q", f"{server.url}/Mail.git", str(work)], where)
                _run(["git", "config", "lfs.locksverify", "false"], work)
                _run(
                    ["git", "remote", "set-url", "--push", "origin", server.push_url("Mail")], work
                )
                store = Store(state)  # read through the state layer, as the daemon writes it
                for n in range(2, 2 + PUSHES):
                    before = {
                        c["path"]: c["started"] for c in client.status(str(cvl))[0]["components"]
                    }
                    write_pattern(work / "root.qcow2", 0x40 + n, "2M", "64k")
                    _run(["git", "commit", "-q", "-am", f"v{n}"], work)
                    _run(["git", "tag", "-a", f"v{n}", "-m", f"version {n}"], work)
                    _run(["git", "push", "-q", "origin", "main", f"v{n}"], work)
                    returned = time.time()
                    _wait_history(store, n - 1)
                    start = [e["at"] for e in store.events() if e["kind"] == "auto-update"][-1]
                    end, result = store.history()[-1]["at"], store.history()[-1]["result"]
                    if result != "applied":
                        raise RuntimeError(f"automatic update v{n}: {result}")
                    after = {c["path"]: c for c in client.status(str(cvl))[0]["components"]}
                    if after["m"]["version"] != str(n):
                        raise RuntimeError(f"Mail runs v{after['m']['version']}, not v{n}")
                    found["restarted"].append(
                        sum(1 for p, t in before.items() if after[p]["started"] != t)
                    )
                    found["update"].append(end - start)
                    found["push"].append(start - returned)
    return found


def rows(only: Callable[[str], bool]) -> Iterable[Row]:
    prefix = "update on a real push (gunicorn + git push + daemon), 6-VM VAN"
    names = [
        f"{prefix}: VMs restarted",
        f"{prefix}: update control plane",
        f"{prefix}: git push returning -> update starting",
    ]
    if not any(only(n) for n in names):
        return
    found = measure()
    note = f"median of {PUSHES} pushes"
    if only(names[0]):
        yield Row(
            names[0],
            statistics.median(found["restarted"]),
            "VMs",
            6,
            "restart the whole VAN",
            "goal exactly 1",
            f"{note}; each push: {found['restarted']}",
        )
    if only(names[1]):
        yield Row(
            names[1],
            statistics.median(found["update"]),
            "s",
            statistics.median(found["baseline"]),
            "stop + start of the whole VAN via the API, same run",
            "goal < 0.5 s",
            f"{note}; inside the daemon, guest boot excluded (test hosts)",
        )
    if only(names[2]):
        yield Row(
            names[2],
            statistics.median(found["push"]),
            "s",
            None,
            "",
            "goal < 2 s",
            f"{note}; includes the 0.2 s burst coalescing",
        )


if __name__ == "__main__":  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for row in rows(lambda _: True):
        print(row)
