"""Stock HTTP clients (curl, requests) against the repository server under real gunicorn."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance, write_pattern


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("http-clients")
    repo = Repository.create(root / "DNS")
    source = tmp_path_factory.mktemp("http-clients-src")
    cvl = sample_appliance(source)
    publish(repo.path, cvl)
    write_pattern(source / "root.qcow2", 0x22, "2M", "64k")
    publish(repo.path, cvl)
    with running_server(root) as server:
        yield server


def curl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def headers(*args: str) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of a curl request whose body is discarded."""
    out = curl("-o", "/dev/null", "-D", "-", *args).stdout.replace("\r", "").split("\n")
    status = int(out[0].split()[1])
    found = {}
    for line in out[1:]:
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    return status, found


@pytest.mark.conformance("curl", "-OJ saves /versions/N/FILE under its file name")
def test_curl_remote_header_name_saves_the_file_name(served, tmp_path: Path) -> None:
    done = curl("-OJ", f"{served.url}/DNS/versions/2/root.qcow2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["root.qcow2"]


@pytest.mark.conformance("curl", "Range with an unknown unit (items=0-3): whole file, 200")
def test_unknown_range_units_are_ignored(served) -> None:
    status, found = headers("-H", "Range: items=0-3", f"{served.url}/DNS/versions/1/root.qcow2")
    assert status == 200 and "content-range" not in found


@pytest.mark.conformance("curl", "multi-range (bytes=0-3,8-9): whole file, 200")
def test_multi_range_is_answered_whole(served) -> None:
    status, found = headers("-r", "0-3,8-9", f"{served.url}/DNS/versions/1/root.qcow2")
    size = int(found["content-length"])
    assert status == 200 and size > 10


@pytest.mark.conformance("curl", "single range: 206; unsatisfiable: 416 with Content-Range */N")
def test_ranges_and_unsatisfiable_ranges(served) -> None:
    url = f"{served.url}/DNS/versions/1/root.qcow2"
    status, found = headers("-r", "0-3", url)
    assert status == 206 and found["content-range"].startswith("bytes 0-3/")
    total = found["content-range"].split("/")[1]
    status, found = headers("-r", "999999999999-", url)
    assert status == 416 and found["content-range"] == f"bytes */{total}"


@pytest.mark.conformance("curl", "405 carries Allow")
def test_method_not_allowed_says_what_is(served) -> None:
    status, found = headers("-X", "POST", f"{served.url}/DNS/versions/1/DNS.cvl")
    assert status == 405 and found["allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.conformance("curl", "CVL served as text/plain, domain XML as application/xml")
def test_cvl_and_xml_have_their_media_types(served) -> None:
    _, cvl = headers(f"{served.url}/DNS/versions/1/DNS.cvl")
    _, xml = headers(f"{served.url}/DNS/versions/1/dns.xml")
    assert cvl["content-type"] == "text/plain; charset=utf-8"
    assert xml["content-type"] == "application/xml"


@pytest.mark.conformance("curl", "ETag on /NAME/, If-None-Match gives 304")
def test_repository_index_revalidates(served) -> None:
    status, found = headers(f"{served.url}/DNS/")
    assert status == 200 and found["etag"].startswith('W/"')
    status, _ = headers("-H", f"If-None-Match: {found['etag']}", f"{served.url}/DNS/")
    assert status == 304


@pytest.mark.conformance("curl", "--compressed: HTML and JSON gzip-encoded")
def test_html_and_json_are_compressed_for_clients_that_accept_it(served) -> None:
    status, found = headers("--compressed", "-H", "Accept: text/html", f"{served.url}/DNS/")
    assert status == 200 and found["content-encoding"] == "gzip"
    assert "Accept-Encoding" in found["vary"]
    page = curl("--compressed", "-H", "Accept: text/html", f"{served.url}/DNS/").stdout
    assert "<html" in page.lower()
    _, plain = headers(f"{served.url}/DNS/versions/1/root.qcow2", "--compressed")
    assert "content-encoding" not in plain


@pytest.mark.conformance("requests", "under a SCRIPT_NAME prefix: /latest/ and LFS hrefs keep it")
def test_prefix_is_kept_in_redirects_and_lfs_hrefs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "src"))
    monkeypatch.setenv("SCRIPT_NAME", "/repos")
    with running_server(root, workers=1, extra={"public_url": None}) as server:
        base = f"{server.url}/repos"
        latest = requests.get(f"{base}/DNS/latest/DNS.cvl", allow_redirects=False, timeout=10)
        assert latest.status_code == 302
        assert latest.headers["Location"].endswith("/repos/DNS/versions/1/DNS.cvl")
        assert requests.get(f"{base}/DNS/latest/DNS.cvl", timeout=10).text.startswith("CVL")
        disk = repo.disks(1)[0]
        oid = disk["sha256"]
        batch = requests.post(
            f"{base}/DNS.git/info/lfs/objects/batch",
            json={"operation": "download", "objects": [{"oid": oid, "size": disk["size"]}]},
            timeout=10,
        ).json()
        href = batch["objects"][0]["actions"]["download"]["href"]
        assert href == f"{base}/DNS.git/info/lfs/objects/{oid}"
        assert requests.get(href, timeout=30).ok
