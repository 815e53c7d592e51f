"""Support for tests, benchmarks and demos: a sample VM appliance and a real gunicorn server.

Not used by the server itself. `sample_appliance` writes a CVL file, a domain XML and a qcow2
program disk (plus a data disk that must never be stored); `running_server` starts
`gunicorn 'reposerver:create_app()'` on a free loopback port with a config file and yields its
base URL and the push credentials.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from reposerver.auth import token_digest

CVL_TEMPLATE = """CVL = "0.8";
{name} extends VMAppliance {{
  var "required" domain;
  vm = "{name_lower}.xml";
  datadisks = {{ device => "vdb", size => "100mb" }};
  provides = "{name}";
}}
"""

XML_TEMPLATE = """<domain type='qemu'>
  <name>{name_lower}</name>
  <memory unit='MiB'>128</memory>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='data.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def sample_appliance(
    directory: Path, name: str = "DNS", size: str = "16M", fill: int = 0x11, fill_bytes: str = "1M"
) -> Path:
    """Write a VM appliance into `directory`; return its CVL file."""
    directory.mkdir(parents=True, exist_ok=True)
    cvl = directory / f"{name}.cvl"
    cvl.write_text(CVL_TEMPLATE.format(name=name, name_lower=name.lower()))
    (directory / f"{name.lower()}.xml").write_text(XML_TEMPLATE.format(name_lower=name.lower()))
    image = directory / "root.qcow2"
    if not image.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), size], check=True)
        write_pattern(image, fill, 0, fill_bytes)
    return cvl


def write_pattern(image: Path, byte: int, offset: int | str, length: int | str) -> None:
    """Write `length` bytes of `byte` at `offset` into a qcow2 image (via qemu-io)."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {byte} {offset} {length}", str(image)],
        check=True,
        capture_output=True,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """A running server: base URL, and the user/token allowed to push."""

    url: str
    user: str
    token: str
    root: Path

    def push_url(self, name: str) -> str:
        """The git remote URL with credentials for repository `name`."""
        return self.url.replace("http://", f"http://{self.user}:{self.token}@") + f"/{name}.git"


@contextmanager
def running_server(
    root: Path,
    workers: int = 4,
    extra: dict[str, object] | None = None,
    server: str = "gunicorn",
) -> Iterator[Server]:
    """Serve `root` on a free port until the block ends: with `server="gunicorn"` as production
    does, with `server="cui serve"` through the development server the README shows."""
    if server not in ("gunicorn", "cui serve"):
        raise ValueError(f"unknown server {server!r}")
    port = free_port()
    token = "test-token-" + os.urandom(8).hex()
    config = {
        "root": str(root),
        "users": {"publisher": {"token_sha256": token_digest(token)}},
        "public_url": f"http://127.0.0.1:{port}",
        **(extra or {}),
    }
    with tempfile.TemporaryDirectory(prefix="cv-srv-") as tmp:
        config_file = Path(tmp) / "server.json"
        env = {**os.environ, "COLLECTIVE_REPOSERVER_CONFIG": str(config_file)}
        if server == "gunicorn":
            command = [
                *(sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "gthread"),
                *("--threads", "4", "-b", f"127.0.0.1:{port}", "--timeout", "300"),
                "reposerver:create_app()",
            ]
        else:
            del config["root"]  # given on the command line
            del env["COLLECTIVE_REPOSERVER_CONFIG"]
            command = [sys.executable, "-m", "cui.main", "serve", str(root), "--port", str(port)]
            command += ["--config", str(config_file)]
        config_file.write_text(json.dumps(config))
        log = open(Path(tmp) / "server.log", "wb")
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    requests.get(url + "/", timeout=5)
                    break
                except requests.RequestException:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.flush()
                        raise RuntimeError(
                            f"{server} did not start:\n" + (Path(tmp) / "server.log").read_text()
                        ) from None
                    time.sleep(0.1)
            yield Server(url, "publisher", token, Path(root))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
