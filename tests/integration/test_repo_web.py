"""Every HTTP route: answers, caching, Range, auth; bad input is a 4xx and writes nothing."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from reposerver import create_app
from reposerver.auth import token_digest
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import sample_appliance, write_pattern

TOKEN = "tok-" + "x" * 20
AUTH = {"Authorization": "Basic " + base64.b64encode(f"publisher:{TOKEN}".encode()).decode()}
BAD_AUTH = {"Authorization": "Basic " + base64.b64encode(b"publisher:wrong").decode()}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("web")
    repo = Repository.create(tmp / "root" / "DNS")
    cvl = sample_appliance(tmp / "app")
    publish(repo.path, cvl)
    write_pattern(tmp / "app" / "root.qcow2", 0x55, "4M", "128k")
    publish(repo.path, cvl)
    config = {
        "root": str(tmp / "root"),
        "users": {"publisher": {"token_sha256": token_digest(TOKEN)}},
        "max_upload_bytes": 1 << 20,
    }
    return create_app(config).test_client(), repo, config


def snapshot(repo: Repository) -> list[str]:
    return sorted(
        str(p.relative_to(repo.path))
        for p in repo.path.rglob("*")
        if p.is_file() and "logs" not in p.parts
    )


def test_index_and_repository_json(served) -> None:
    client, repo, _ = served
    assert client.get("/").json == [{"name": "DNS", "latest": 2}]
    data = client.get("/DNS/").json
    assert data["name"] == "DNS" and data["latest"] == 2
    v1 = data["versions"][0]
    assert set(v1) == {"number", "tag", "commit", "signed", "signer", "date", "files"}
    assert v1["tag"] == "v1" and v1["signed"] is False and v1["signer"] is None
    assert "DNS.cvl" in v1["files"] and "dns.xml" in v1["files"] and "root.qcow2" in v1["files"]
    assert "data.qcow2" not in v1["files"], "data disks are never stored"


def test_versioned_file_is_immutable_with_strong_etag(served) -> None:
    client, _, _ = served
    r = client.get("/DNS/versions/1/DNS.cvl")
    assert r.status_code == 200 and b"extends VMAppliance" in r.data
    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    etag = r.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert client.get("/DNS/versions/1/DNS.cvl", headers={"If-None-Match": etag}).status_code == 304


def test_latest_redirects_without_caching(served) -> None:
    client, _, _ = served
    r = client.get("/DNS/latest/DNS.cvl")
    assert r.status_code == 302 and r.headers["Location"].endswith("/DNS/versions/2/DNS.cvl")
    assert r.headers["Cache-Control"] == "no-cache"


def test_tag_disks_and_objects(served) -> None:
    client, repo, _ = served
    tag = client.get("/DNS/versions/2/tag")
    assert tag.data == repo.raw_tag(2) and tag.data.startswith(b"object ")
    disks = client.get("/DNS/versions/2/disks.json").json
    assert [d["name"] for d in disks] == ["root.qcow2"]
    chain = disks[0]["chain"]
    assert len(chain) == 2, "version 2 is an overlay on version 1"
    assert chain[0]["sha256"] == client.get("/DNS/versions/1/disks.json").json[0]["sha256"]
    top = chain[-1]
    body = client.get(f"/DNS/objects/sha256/{top['sha256']}")
    assert body.status_code == 200 and hashlib.sha256(body.data).hexdigest() == top["sha256"]
    assert len(body.data) == top["size"] and top["sha256"] in body.headers["ETag"]
    head = client.head(f"/DNS/objects/sha256/{top['sha256']}")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == top["size"]
    part = client.get(f"/DNS/objects/sha256/{top['sha256']}", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.data == body.data[10:110]
    assert part.headers["Content-Range"] == f"bytes 10-109/{top['size']}"
    disk = client.get("/DNS/versions/2/root.qcow2")
    assert disk.status_code == 200 and disk.data == body.data


BAD_GETS = [
    ("/DNS/versions/1/../../../etc/passwd", 400),
    ("/DNS/versions/1/%2e%2e/%2e%2e/etc/passwd", 400),
    ("/DNS/versions/1/..%2f..%2fetc%2fpasswd", 400),
    ("/DNS/versions/1//etc/passwd", 400),
    ("/DNS/versions/1/.git/config", 404),
    ("/%2e%2e/versions/1/DNS.cvl", 400),
    ("/..%2fDNS/", 400),
    ("/DNS/versions/99/DNS.cvl", 404),
    ("/DNS/versions/abc/DNS.cvl", 400),
    ("/DNS/versions/01/DNS.cvl", 400),
    ("/DNS/versions/-1/DNS.cvl", 400),
    ("/DNS/versions/1.0/tag", 400),
    ("/DNS/versions/1/nothere.txt", 404),
    ("/nope/", 404),
    ("/nope/latest/DNS.cvl", 404),
    ("/DNS/objects/sha256/xyz", 400),
    ("/DNS/objects/sha256/" + "0" * 64, 404),
    ("/DNS/objects/sha256/../../collective.json", 400),
    ("/..%2f..%2fetc.git/info/refs?service=git-upload-pack", 400),
    ("/nope.git/info/refs?service=git-upload-pack", 404),
    ("/DNS/no/such/route", 404),
]


@pytest.mark.parametrize(("path", "status"), BAD_GETS)
def test_bad_get_is_a_clear_4xx(served, path: str, status: int) -> None:
    client, repo, _ = served
    before = snapshot(repo)
    r = client.get(path)
    assert r.status_code == status, r.data
    assert r.data.strip(), "the body says what is wrong"
    assert snapshot(repo) == before


@pytest.mark.parametrize(
    "header", ["bytes=abc", "bytes=5-2", "items=0-1", "bytes=--1", "bytes=0-1,4-5"]
)
def test_a_range_we_do_not_honour_is_ignored_whole_object_200(served, header: str) -> None:
    """RFC 9110 14.2: unknown units MUST be ignored; invalid or multiple ranges MAY be."""
    client, repo, _ = served
    oid = repo.disks(1)[0]["sha256"]
    r = client.get(f"/DNS/objects/sha256/{oid}", headers={"Range": header})
    assert r.status_code == 200 and "Content-Range" not in r.headers
    assert hashlib.sha256(r.data).hexdigest() == oid


def test_unsatisfiable_range_is_416(served) -> None:
    client, repo, _ = served
    oid = repo.disks(1)[0]["sha256"]
    assert (
        client.get(f"/DNS/objects/sha256/{oid}", headers={"Range": "bytes=999999999-"}).status_code
        == 416
    )


def _batch(client, operation: str, oid: str, size: int, headers: dict[str, str] | None = None):
    return client.post(
        "/DNS.git/info/lfs/objects/batch",
        headers=headers or {},
        json={"operation": operation, "objects": [{"oid": oid, "size": size}]},
    )


def test_lfs_upload_verified_and_writes_need_credentials(served) -> None:
    client, repo, _ = served
    data = os.urandom(5000)
    oid = hashlib.sha256(data).hexdigest()
    assert _batch(client, "upload", oid, len(data)).status_code == 401
    assert _batch(client, "upload", oid, len(data), BAD_AUTH).status_code == 401
    answer = _batch(client, "upload", oid, len(data), AUTH)
    assert answer.status_code == 200 and answer.content_type == "application/vnd.git-lfs+json"
    href = answer.json["objects"][0]["actions"]["upload"]["href"]
    path = href.split("localhost", 1)[1]
    before = snapshot(repo)
    assert client.put(path, data=data).status_code == 401
    wrong = client.put(path, data=data[:-1] + b"!", headers=AUTH)
    assert wrong.status_code == 422 and b"hashes to" in wrong.data
    assert snapshot(repo) == before, "a hash-mismatched upload writes nothing"
    assert client.put(path, data=data, headers=AUTH).status_code == 200
    # staged, not stored: invisible to downloads until a push referencing it is accepted
    assert repo.store.staging().has(oid, len(data)) and not repo.store.has(oid)
    assert _batch(client, "download", oid, len(data)).json["objects"][0]["error"]["code"] == 404
    assert client.get(path).status_code == 404
    assert "actions" not in _batch(client, "upload", oid, len(data), AUTH).json["objects"][0]
    assert repo.store.promote(repo.store.staging(), [oid]) == [oid]  # what an accepted push does
    download = _batch(client, "download", oid, len(data))
    assert (
        client.get(
            download.json["objects"][0]["actions"]["download"]["href"].split("localhost", 1)[1]
        ).data
        == data
    )
    assert "actions" not in _batch(client, "upload", oid, len(data), AUTH).json["objects"][0]


def test_lfs_bad_input(served) -> None:
    client, repo, config = served
    before = snapshot(repo)
    streamed = client.put(
        f"/DNS.git/info/lfs/objects/{'a' * 64}",
        headers=AUTH,
        data=b"x" * (config["max_upload_bytes"] + 10),
    )
    assert streamed.status_code == 413
    assert (
        client.put("/DNS.git/info/lfs/objects/NOTHEX", data=b"x", headers=AUTH).status_code == 400
    )
    assert (
        client.post("/DNS.git/info/lfs/objects/batch", data=b"{not json", headers=AUTH).status_code
        == 400
    )
    assert (
        client.post("/DNS.git/info/lfs/objects/batch", json={"operation": "steal"}).status_code
        == 400
    )
    huge = b'{"operation": "download", "objects": [' + b" " * (2 << 20) + b"]}"
    assert client.post("/DNS.git/info/lfs/objects/batch", data=huge).status_code == 413
    assert _batch(client, "download", "g" * 64, 1).status_code == 400
    assert _batch(client, "download", "a" * 64, -1).status_code == 400
    missing = _batch(client, "download", "a" * 64, 1).json["objects"][0]
    assert missing["error"]["code"] == 404
    assert client.post("/../DNS.git/info/lfs/objects/batch", json={}).status_code in (400, 404)
    assert snapshot(repo) == before


def test_push_needs_credentials(served) -> None:
    client, _, _ = served
    r = client.get("/DNS.git/info/refs?service=git-receive-pack")
    assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
    assert (
        client.get("/DNS.git/info/refs?service=git-receive-pack", headers=BAD_AUTH).status_code
        == 401
    )
    assert (
        client.get("/DNS.git/info/refs?service=git-receive-pack", headers=AUTH).status_code == 200
    )
    assert client.get("/DNS.git/info/refs?service=git-upload-pack").status_code == 200


def test_read_protection(served) -> None:
    _, _, config = served
    client = create_app({**config, "read_protected": True}).test_client()
    assert client.get("/").status_code == 401
    assert client.get("/DNS/versions/1/DNS.cvl").status_code == 401
    assert client.get("/DNS.git/info/refs?service=git-upload-pack").status_code == 401
    assert client.get("/", headers=AUTH).status_code == 200
    assert client.get("/DNS.git/info/refs?service=git-upload-pack", headers=AUTH).status_code == 200


def test_corrupt_object_is_refused_on_read(tmp_path: Path) -> None:
    repo = Repository.create(tmp_path / "root" / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "app"))
    oid = repo.disks(1)[0]["sha256"]
    path = repo.store.path(oid)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(100000)
        f.write(b"corrupted")
    client = create_app({"root": str(tmp_path / "root")}).test_client()
    r = client.get(f"/DNS/objects/sha256/{oid}")
    assert r.status_code == 422 and b"corrupt" in r.data
