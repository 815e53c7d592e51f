"""The utility boots a VM on a lab host over qemu+ssh: its disks travel into that host's storage
pool through libvirt, its parameters through a libvirt stream; an update sends only the new
delta object; a stop leaves no volume behind (checked inside the host's namespace).

The utility runs in this process (`ClusterManager`), reaches the host only as
`qemu+ssh://root@…/system`, and fetches the appliance from a real gunicorn repository server on
loopback; the lab host never talks to the repository.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from lab_fixture import Lab, in_host, lab_fixture, lab_session_fixture  # noqa: F401

from reposerver.disks import chain
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server
from utility.adapters.executor import Timeouts
from utility.adapters.host_storage import POOL_ROOT, VOLUME_POOL
from utility.service.manager import Caller, ClusterManager, Settings

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.lab, pytest.mark.vm, pytest.mark.xdist_group("lab")]

ROOT = Path(__file__).resolve().parents[2]
ADMIN = Caller("root", "admin")
MEASUREMENTS = ROOT / "artifacts" / "lab-measurements.json"


def record(key: str, value: object) -> None:
    MEASUREMENTS.parent.mkdir(exist_ok=True)
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data[key] = value
    MEASUREMENTS.write_text(json.dumps(data, indent=2) + "\n")


@pytest.fixture(scope="module")
def dns_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("lab-dns")
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-appliances"), str(out), "--json",
         "--only", "DNS", "--only", "DNS-v2"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {row["appliance"]: Path(row["dir"]) for row in rows}


def host_volumes(lab_host: object) -> list[str]:
    """The files of the utility's volume pool, listed inside the host's mount namespace."""
    done = in_host(lab_host, ["ls", "-A", f"{POOL_ROOT}/volumes"])  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_vm_on_a_lab_host_gets_its_disks_through_the_pool_and_updates_by_delta(
    lab: Lab, dns_images: dict[str, Path], tmp_path: Path
) -> None:
    host = lab.hosts[0]
    root = tmp_path / "repos"
    root.mkdir()
    repo = Repository.create(root / "DNS")
    publish(repo.path, dns_images["DNS"] / "DNS.cvl")
    with running_server(root, workers=2) as server:
        user = tmp_path / "user"
        user.mkdir()
        user.chmod(0o755)
        cvl = user / "MyDNS.cvl"
        cvl.write_text(
            f'import {{ url => "{server.url}/DNS", cvl => "DNS.cvl" }} DNS;\n'
            'MyDNS extends DNS { domain = "acme.org"; dnshosts = { name => name, '
            "ip => ethernet0.ip }; }\n"
        )
        prefix = "p" + secrets.token_hex(2)
        manager = ClusterManager(
            tmp_path / "state", Settings(prefix=prefix), Timeouts(ready=240, stop=60)
        )
        conn = libvirt.open(host.uri)
        try:
            manager.add_host(ADMIN, host.name, host.uri, 1 << 30, 4)
            storage = manager.hosts_service.pool.get(host.name, host.uri).storage
            assert VOLUME_POOL in conn.listStoragePools()  # made at `host add`
            manager.add_vlans(ADMIN, "3200-3201")
            manager.add_public_ips(ADMIN, "198.51.100.220-198.51.100.221")

            started = time.monotonic()
            result = manager.start(ADMIN, str(cvl))
            boot_s = time.monotonic() - started
            vm = result["components"][0]
            assert result["status"] == "running" and vm["state"] == "running", result
            dom = conn.lookupByName(vm["domain"])
            disk_sources = [
                s.get("file") for s in _sources(dom.XMLDesc(0)) if s.get("file") is not None
            ]
            assert disk_sources and all(
                p.startswith(f"{POOL_ROOT}/volumes/") for p in disk_sources
            ), disk_sources
            v1_top = _top_object(repo, 1)
            v1_objects = set(chain(repo.store, v1_top))
            assert {sha for sha, _ in storage.uploads.objects} == v1_objects
            assert v1_objects <= set(storage.objects())
            # the objects are on that host's disk, under their content address
            for sha in v1_objects:
                local = repo.store.path(sha)
                inside = in_host(
                    host, ["sha256sum", f"{POOL_ROOT}/objects/{sha[:2]}/{sha[2:4]}/{sha}"]
                )
                assert inside.stdout.split()[0] == sha == local.name
            # parameters arrived over the libvirt stream: the guest configured itself with them
            console = Path(host.directory, "log", "qemu", f"{vm['domain']}.console")
            text = console.read_text(errors="replace")
            assert "collective-agent" in text, text[-2000:]
            assert sorted(host_volumes(host)) == sorted(
                f"{vm['domain']}-{n}" for n in ("vda.qcow2", "data-vdb.qcow2")
            )

            # v2: only its new delta object travels to the host
            publish(repo.path, dns_images["DNS-v2"] / "DNS.cvl")
            v2_top = _top_object(repo, 2)
            new = set(chain(repo.store, v2_top)) - v1_objects
            assert new, "v2 is stored as a delta over v1"
            before = len(storage.uploads.objects)
            updated = manager.update(ADMIN, str(cvl))
            assert updated["error"] is None and updated["applied"], updated
            sent = storage.uploads.objects[before:]
            assert {sha for sha, _ in sent} == new
            delta_bytes = sum(n for _, n in sent)
            whole = (dns_images["DNS-v2"] / "dns.qcow2").stat().st_size
            assert delta_bytes == sum(repo.store.path(s).stat().st_size for s in new)
            assert delta_bytes < whole / 2, (delta_bytes, whole)
            status = manager.status(ADMIN, str(cvl))[0]["components"][0]
            assert status["version"] == "2" and status["state"] == "running"
            # the data disk came back to the VM directory at the halt and went up again
            assert (
                tmp_path / "state" / "vaps" / str(result["id"]) / "root" / "data-vdb.qcow2"
            ).is_file()

            # garbage collection keeps what a running VM needs, its delta's parent included
            storage.grace = 0.0
            assert storage.collect_garbage() == []
            assert set(chain(repo.store, v2_top)) <= set(storage.objects())

            stopped = manager.stop(ADMIN, str(cvl))
            assert stopped["problems"] == []
            assert host_volumes(host) == []  # no volume left on the host
            assert conn.storagePoolLookupByName(VOLUME_POOL).listVolumes() == []
            # nothing needs the objects any more: collected at the stop (grace 0 here)
            assert storage.objects() == []
            left = in_host(host, ["find", f"{POOL_ROOT}/objects", "-type", "f"])
            assert left.returncode == 0 and left.stdout.split() == []
            assert (
                tmp_path / "state" / "vaps" / str(result["id"]) / "root" / "data-vdb.qcow2"
            ).is_file()  # the data disk is kept here
            record("lab_boot_with_upload_s", round(boot_s, 1))
            record("lab_update_uploaded_bytes", delta_bytes)
            record("lab_update_whole_image_bytes", whole)
        finally:
            manager.close()
            for dom in conn.listAllDomains():
                if dom.name().startswith(prefix):
                    dom.destroy()
            for net in conn.listAllNetworks():
                if net.name().startswith(prefix):
                    net.destroy()
            conn.close()


def _sources(xml: str) -> list[dict[str, str]]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    return [dict(s.attrib) for s in root.findall("devices/disk/source")]


def _top_object(repo: Repository, version: int) -> str:
    listed = {d["name"]: d["sha256"] for d in repo.disks(version)}
    return str(listed["dns.qcow2"])
