"""Repository benchmarks: delta storage of a new version, object download speed, clone time.

1. Version N+1 of an appliance whose 1 GiB (virtual, fully written) program disk changed in 1%
   of its 4 KiB blocks at random: bytes stored and bytes a client holding version N transfers,
   against 1.2 x changed + 1 MiB (goal), beside a full-image copy (what Vagrant boxes and plain
   Git LFS store and transfer).
2. Download throughput of a 256 MiB object from gunicorn (`reposerver:create_app()`) against
   nginx serving the same file on loopback, both with curl, same run.
3. `git clone` over HTTP of a repository with 100 versions, beside a local `git clone --no-local`.

Disk use peaks around 2.5 GiB in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bench import Row, median_time

from reposerver.client import HttpRepository
from reposerver.objects import ObjectStore
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import free_port, running_server, sample_appliance, write_pattern

MiB = 1 << 20
BLOCK = 4096


def _change_blocks(image: Path, fraction: float, seed: int = 7) -> int:
    blocks = (1 << 30) // BLOCK
    rng = random.Random(seed)
    chosen = rng.sample(range(blocks), int(blocks * fraction))
    args = []
    for i, block in enumerate(chosen):
        args += ["-c", f"write -P {0x20 + i % 200} {block * BLOCK} {BLOCK}"]
    for start in range(0, len(args), 4000):
        subprocess.run(
            ["qemu-io", "-f", "qcow2", *args[start : start + 4000], str(image)],
            check=True,
            capture_output=True,
        )
    return len(chosen) * BLOCK


def _delta_rows(tmp: Path) -> Iterable[Row]:
    app = tmp / "delta-app"
    app.mkdir()
    image = app / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    write_pattern(image, 0x5A, 0, "1G")
    cvl = sample_appliance(app)
    repo = Repository.create(tmp / "root" / "Delta")
    publish(repo.path, cvl)
    changed = _change_blocks(image, 0.01)
    start = time.perf_counter()
    result = publish(repo.path, cvl)
    publish_seconds = time.perf_counter() - start
    full = image.stat().st_size
    goal = 1.2 * changed + MiB
    stored = result.stored_bytes
    yield Row(
        "repo: delta v2 stored, 1 GiB disk, 1% of 4 KiB blocks changed",
        stored,
        "B",
        baseline=full,
        baseline_label="full-image copy (Vagrant box / plain Git LFS)",
        goal=f"<= 1.2 x {changed / MiB:.2f} MiB changed + 1 MiB = {goal / MiB:.2f} MiB "
        f"({'met' if stored <= goal else 'NOT met'})",
        note=f"publish took {publish_seconds:.1f} s",
    )
    # Transfer: a client that has v1 in its cache fetches v2's chain.
    cache = tmp / "cache"
    base = repo.disks(1)[0]["sha256"]
    cached = ObjectStore(cache / "objects")
    cached.path(base).parent.mkdir(parents=True, exist_ok=True)
    os.link(repo.store.path(base), cached.path(base))
    with running_server(repo.path.parent, workers=2) as server:
        moved = [0]

        def progress(done: int, total: int) -> None:
            moved[0] = max(moved[0], done) if done <= total else moved[0]

        before = sum(p.stat().st_size for p in (cache / "objects").rglob("*") if p.is_file())
        top = HttpRepository(server.url + "/Delta").fetch_disk(2, "root.qcow2", cache, progress)
        after = sum(p.stat().st_size for p in (cache / "objects").rglob("*") if p.is_file())
        check = subprocess.run(
            ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(image), str(top)],
            capture_output=True,
        )
    transferred = after - before
    yield Row(
        "repo: delta v2 transferred to a host holding v1",
        transferred,
        "B",
        baseline=full,
        baseline_label="full-image download",
        goal=f"<= {goal / MiB:.2f} MiB ({'met' if transferred <= goal else 'NOT met'})",
        note="cached chain " + ("equals the image" if check.returncode == 0 else "DIFFERS"),
    )


def _nginx(root: Path, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
user root;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
    _wait_http(f"http://127.0.0.1:{port}/", proc)
    return proc


def _wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    import requests

    for _ in range(100):
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            if proc.poll() is not None:
                raise RuntimeError(f"server for {url} exited") from None
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _curl(url: str) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)

    return run


def _download_rows(tmp: Path) -> Iterable[Row]:
    repo = Repository.create(tmp / "root" / "Big")
    blob = tmp / "big.bin"
    with open(blob, "wb") as f:
        for _ in range(256):
            f.write(os.urandom(MiB))
    oid, size = repo.store.put_file(blob)
    blob.unlink()
    nginx_root = tmp / "nginx-root"
    nginx_root.mkdir()
    os.link(repo.store.path(oid), nginx_root / "object")
    port = free_port()
    nginx = _nginx(nginx_root, port, tmp)
    try:
        with running_server(repo.path.parent, workers=2) as server:
            ours = median_time(_curl(f"{server.url}/Big/objects/sha256/{oid}"), repeat=5)
            theirs = median_time(_curl(f"http://127.0.0.1:{port}/object"), repeat=5)
    finally:
        nginx.terminate()
        nginx.wait(10)
    ours_mbs, theirs_mbs = size / ours / MiB, size / theirs / MiB
    yield Row(
        "repo: 256 MiB object download, gunicorn (MiB/s)",
        ours_mbs,
        "MiB/s",
        baseline=theirs_mbs,
        baseline_label="nginx, same file, loopback, curl",
        goal=f">= 80% of nginx ({'met' if ours_mbs >= 0.8 * theirs_mbs else 'NOT met'})",
    )


def _clone_rows(tmp: Path) -> Iterable[Row]:
    app = tmp / "clone-app"
    cvl = sample_appliance(app, size="4M", fill_bytes="1M")
    repo = Repository.create(tmp / "root" / "Hundred")
    text = cvl.read_text()
    for i in range(100):
        cvl.write_text(text + f"/* revision {i} */\n")
        publish(repo.path, cvl)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    counter = [0]

    def clone(url: str) -> Callable[[], None]:
        def run() -> None:
            counter[0] += 1
            target = tmp / f"clone{counter[0]}"
            subprocess.run(
                ["git", "clone", "-q", url, str(target)], check=True, env=env, capture_output=True
            )
            shutil.rmtree(target)

        return run

    with running_server(repo.path.parent, workers=2) as server:
        ours = median_time(clone(f"{server.url}/Hundred.git"), repeat=5)
    local = median_time(clone(f"file://{repo.path}"), repeat=5)
    yield Row(
        "repo: git clone over HTTP, 100 versions",
        ours,
        "s",
        baseline=local,
        baseline_label="stock git clone --no-local (file://), same repository",
    )


def rows(only: Callable[[str], bool]) -> Iterable[Row]:
    """The repository benchmark rows (see the module docstring)."""
    sections = [("delta", _delta_rows), ("download", _download_rows), ("clone", _clone_rows)]
    for key, section in sections:
        if not (only(f"repo: {key}") or only("repo") or only(key)):
            continue
        with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
            os.environ.setdefault("HOME", tmp)
            yield from section(Path(tmp))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for row in rows(lambda name: True):
        print(row)
