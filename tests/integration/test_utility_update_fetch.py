"""`update` downloads the new version's disks holding no state lock: while the download runs,
another thread writes to the state database at once. Real gunicorn repository server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance, write_pattern
from utility.adapters.simulation import simulated_host_uri
from utility.service.manager import Caller, ClusterManager

ADMIN = Caller("root", "admin")


@contextmanager
def running_dns_vap(tmp_path: Path) -> Iterator[tuple[ClusterManager, Path, Path, Repository]]:
    """A DNS VAP from a real gunicorn repository running on a test host: (manager, the user's
    CVL file, the publisher's source image, the repository), while the server runs."""
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.create(root / "DNS")
    src = sample_appliance(tmp_path / "src", "DNS", size="32M", fill_bytes="4M")
    publish(repo.path, src)
    with running_server(root, workers=2) as server:
        cvl = tmp_path / "user" / "MyDNS.cvl"
        cvl.parent.mkdir()
        cvl.write_text(
            f'import {{ url => "{server.url}/DNS", cvl => "DNS.cvl" }} DNS;\n'
            'MyDNS extends DNS { domain = "acme.org"; }\n'
        )
        manager = ClusterManager(tmp_path / "state")
        manager.add_host(ADMIN, "h1", simulated_host_uri(tmp_path, "h1"), 1 << 30, 4)
        manager.add_vlans(ADMIN, "100-101")
        manager.add_public_ips(ADMIN, "192.0.2.1-192.0.2.2")
        manager.start(ADMIN, str(cvl))
        try:
            yield manager, cvl, src, repo
        finally:
            manager.close()


def test_update_downloads_without_holding_the_state_write_lock(tmp_path: Path) -> None:
    with running_dns_vap(tmp_path) as (manager, cvl, src, repo):
        write_pattern(src.parent / "root.qcow2", 0x33, "8M", "3M")
        publish(repo.path, src)

        writes: list[float] = []

        def write_meanwhile() -> None:
            began = time.monotonic()
            manager.store.add_vlans([4000 + len(writes)])  # needs the SQLite write lock
            manager.store.event(None, "probe", "written during the download")
            writes.append(time.monotonic() - began)

        def progress(label: str, done: int, total: int) -> None:
            if not writes:
                writer = threading.Thread(target=write_meanwhile)
                writer.start()
                writer.join(5)
                assert writes, "a state write blocked while update downloaded a disk"

        result = manager.update(ADMIN, str(cvl), progress=progress)
        assert result["error"] is None and result["applied"]
        assert writes and writes[0] < 1.0
        status = manager.status(ADMIN, str(cvl))[0]["components"][0]
        assert status["version"] == "2" and status["state"] == "running"


def test_dry_run_plans_from_the_disk_list_and_downloads_nothing(tmp_path: Path) -> None:
    with running_dns_vap(tmp_path) as (manager, cvl, src, repo):
        cache = tmp_path / "state" / "cache"
        before = sorted(p.name for p in cache.rglob("*") if p.is_file())
        assert before, "the start filled the disk cache"
        write_pattern(src.parent / "root.qcow2", 0x33, "8M", "3M")
        publish(repo.path, src)
        heard: list[str] = []
        plan = manager.update(
            ADMIN, str(cvl), dry_run=True, progress=lambda label, *_: heard.append(label)
        )
        assert not plan["applied"] and any(line.startswith("~") for line in plan["lines"])
        assert heard == [], "a dry run downloads nothing"
        assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == before
