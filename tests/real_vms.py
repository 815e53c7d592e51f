"""Set-up shared by the tests that boot real VMs on this machine's `qemu:///system`.

- `system_qemu()`: a connection to `qemu:///system`, or the test is skipped (with the reason)
  where libvirtd or qemu cannot run;
- `vm_workdir(prefix)`: a short, world-traversable directory under /var/tmp (qemu, running as
  libvirt-qemu, must reach the disks, and Unix socket paths stay under 108 bytes), removed after;
- `dns_cvl(workdir)`: the DNS appliance built by `scripts/build-appliances` (cached) and a user
  file `MyDNS.cvl` importing it from that directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build-appliances"


def system_qemu() -> Any:
    """An open `qemu:///system` connection; skips the test where it cannot be had."""
    libvirt = pytest.importorskip("libvirt")
    try:
        return libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:  # pragma: no cover - only where libvirtd is missing
        pytest.skip(f"qemu:///system is not usable here: {exc}")


@contextmanager
def vm_workdir(prefix: str) -> Iterator[Path]:
    """A fresh `/var/tmp/<prefix>-…` directory, mode 0755, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def build_appliance(out: Path, name: str) -> Path:
    """Build (or take from the cache) one appliance of examples/appliances; its directory."""
    built = subprocess.run(
        [str(BUILD), str(out), "--json", "--only", name],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr
    return Path(json.loads(built.stdout.splitlines()[0])["dir"])


def dns_cvl(workdir: Path) -> Path:
    """`workdir/apps/MyDNS.cvl`: the built DNS appliance with a domain and its own host record."""
    image_dir = build_appliance(workdir / "img", "DNS")
    apps = workdir / "apps"
    apps.mkdir()
    apps.chmod(0o755)
    cvl = apps / "MyDNS.cvl"
    cvl.write_text(
        f'import {{ url => "file:{image_dir}", cvl => "DNS.cvl" }} DNS;\n'
        'MyDNS extends DNS {\n  domain = "acme.org";\n'
        "  dnshosts = { name => name, ip => ethernet0.ip };\n}\n"
    )
    return cvl
