"""`cui fetch`: a version as a directory that stock qemu-img and virsh open as they are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance, write_pattern

CUI = str(Path(sys.executable).with_name("cui"))
DOMAIN = """<domain type='qemu'>
  <name>fetched-dns</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
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


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fetch-repos")
    repo = Repository.create(root / "DNS")
    source = tmp_path_factory.mktemp("fetch-src")
    cvl = sample_appliance(source)
    (source / "dns.xml").write_text(DOMAIN)
    publish(repo.path, cvl)
    write_pattern(source / "root.qcow2", 0x22, "2M", "64k")
    publish(repo.path, cvl)
    with running_server(root) as server:
        yield server, source


def cui(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CUI, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.conformance("qemu-img", "info --backing-chain on a `cui fetch` directory (v2)")
def test_stock_qemu_img_opens_the_fetched_chain(two_versions, tmp_path: Path) -> None:
    server, source = two_versions
    done = cui("fetch", f"{server.url}/DNS", "v2", str(tmp_path / "v2"), "--json")
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert written["version"] == 2 and written["disks"] == ["root.qcow2"]
    info = subprocess.run(
        ["qemu-img", "info", "--backing-chain", "--output=json", str(tmp_path / "v2/root.qcow2")],
        capture_output=True,
        text=True,
        check=True,
    )
    chain = json.loads(info.stdout)
    assert len(chain) == 3 and all(link["format"] == "qcow2" for link in chain)
    same = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(tmp_path / "v2/root.qcow2"),
         str(source / "root.qcow2")],
        capture_output=True,
    )  # fmt: skip
    assert same.returncode == 0, "the fetched v2 reads exactly like the publisher's image"


@pytest.mark.conformance("virsh", "define the domain XML of a `cui fetch` directory")
def test_virsh_defines_the_fetched_domain_xml(two_versions, tmp_path: Path) -> None:
    server, _ = two_versions
    into = tmp_path / "latest"
    assert cui("fetch", f"{server.url}/DNS", str(into)).returncode == 0
    xml = (into / "dns.xml").read_text()
    assert f"{into}/root.qcow2" in xml and f"{into}/data.qcow2" in xml
    assert subprocess.run(["virt-xml-validate", str(into / "dns.xml")]).returncode == 0
    defined = subprocess.run(
        ["virsh", "-c", "test:///default", "define", str(into / "dns.xml")],
        capture_output=True,
        text=True,
    )
    assert defined.returncode == 0 and "fetched-dns" in defined.stdout, defined.stderr


def test_fetch_refuses_a_non_empty_directory_and_leaves_it_alone(
    two_versions, tmp_path: Path
) -> None:
    server, _ = two_versions
    into = tmp_path / "busy"
    into.mkdir()
    (into / "keep.txt").write_text("mine")
    done = cui("fetch", f"{server.url}/DNS", "1", str(into))
    assert done.returncode == 1 and "not an empty directory" in done.stderr
    assert [p.name for p in into.iterdir()] == ["keep.txt"]
    missing = cui("fetch", f"{server.url}/DNS", "9", str(tmp_path / "nine"))
    assert missing.returncode == 1 and not (tmp_path / "nine").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _readme_recipe() -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("<!-- recipe:curl-fetch -->", 1)[1].split("<!-- /recipe -->", 1)[0]
    return block.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.conformance("curl + jq", "README recipe: fetch a v2 disk chain, open it with qemu-img")
def test_the_readme_curl_recipe_gives_an_image_qemu_img_opens(two_versions, tmp_path: Path) -> None:
    server, source = two_versions
    recipe = _readme_recipe().replace("URL=http://HOST:8080/DNS", f"URL={server.url}/DNS", 1)
    subprocess.run(["bash", "-euo", "pipefail", "-c", recipe], cwd=tmp_path, check=True)
    same = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(tmp_path / "root.qcow2"),
         str(source / "root.qcow2")],
        capture_output=True,
    )  # fmt: skip
    assert same.returncode == 0


def test_concurrent_fetches_of_one_object_share_the_cache(two_versions, tmp_path: Path) -> None:
    """The updates one publish event starts fetch the same new disk at once: every one gets
    the verified object (they used to collide on one partial file)."""
    from concurrent.futures import ThreadPoolExecutor

    from reposerver.client import open_repository

    server, _ = two_versions
    cache = tmp_path / "cache"

    def fetch(_: int) -> Path:
        return open_repository(f"{server.url}/DNS").fetch_disk(2, "root.qcow2", cache)

    with ThreadPoolExecutor(8) as pool:
        tops = list(pool.map(fetch, range(8)))
    assert len(set(tops)) == 1 and tops[0].is_file()
    assert not [
        p for p in (cache / "objects" / ".partial").iterdir() if not p.name.endswith(".lock")
    ]
