"""Object store (verified writes and reads, LFS staging and promotion), qcow2 header safety,
signature splitting, settings."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import time
from pathlib import Path

import pytest

from reposerver import qcow2, repo_config
from reposerver.disks import read_header
from reposerver.errors import BadRequest, IntegrityError, NotFound, PayloadTooLarge
from reposerver.events import signature
from reposerver.objects import DEFAULT_STAGING_TTL, ObjectStore, StagedView, backing_reference
from reposerver.repo_config import Subscriber
from reposerver.settings import load_settings
from reposerver.signatures import split_signature


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_and_verified_read(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    data = b"disk bytes" * 1000
    oid, size = store.put_stream(io.BytesIO(data))
    assert oid == hashlib.sha256(data).hexdigest() and size == len(data)
    assert store.path(oid) == tmp_path / "objects" / oid[:2] / oid[2:4] / oid
    assert store.verified_path(oid).read_bytes() == data
    assert store.has(oid, size) and not store.has(oid, size + 1)
    assert store.put_stream(io.BytesIO(data), expected_oid=oid) == (oid, size)


def test_mismatched_or_oversized_writes_leave_nothing(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    with pytest.raises(IntegrityError, match="expected sha256"):
        store.put_stream(io.BytesIO(b"abc"), expected_oid="0" * 64)
    with pytest.raises(IntegrityError, match="expected 4"):
        store.put_stream(io.BytesIO(b"abc"), expected_size=4)
    with pytest.raises(PayloadTooLarge):
        store.put_stream(io.BytesIO(b"x" * 100), max_size=10)
    assert files(tmp_path) == []


def test_corruption_is_detected_on_read(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    oid, _ = store.put_stream(io.BytesIO(b"original"))
    path = store.path(oid)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.verified_path(oid)
    with pytest.raises(NotFound):
        store.verified_path("1" * 64)


def test_staged_objects_are_seen_by_the_checks_view_only(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "lfs" / "objects")
    staging = store.staging()
    assert staging.root == tmp_path / "lfs" / "incoming"
    old, _ = store.put_stream(io.BytesIO(b"published"))
    new, size = staging.put_stream(io.BytesIO(b"uploaded"))
    assert not store.has(new) and staging.has(new, size)
    view = StagedView(store)
    assert view.has(new, size) and view.has(old) and not view.has(new, size + 1)
    assert view.verified_path(new) == staging.path(new) and view.size(new) == size
    assert view.verified_path(old) == store.path(old)
    with pytest.raises(NotFound):
        view.verified_path("2" * 64)


def test_promotion_moves_verified_staged_objects_atomically(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "lfs" / "objects")
    staging = store.staging()
    a, _ = staging.put_stream(io.BytesIO(b"object a"))
    b, _ = staging.put_stream(io.BytesIO(b"object b"))
    dup, _ = store.put_stream(io.BytesIO(b"already stored"))
    staging.put_stream(io.BytesIO(b"already stored"))
    inode = staging.path(a).stat().st_ino
    assert store.promote(staging, [a, dup, "3" * 64]) == [a]
    assert store.path(a).stat().st_ino == inode, "promotion is a rename, not a copy"
    assert store.path(a).stat().st_mode & 0o777 == 0o444
    assert store.verified_path(a).read_bytes() == b"object a"
    assert not staging.has(a) and not staging.has(dup) and staging.has(b) and not store.has(b)
    path = staging.path(b)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.promote(staging, [b])
    assert not store.has(b)


def test_prune_removes_only_objects_older_than_the_ttl(tmp_path: Path) -> None:
    staging = ObjectStore(tmp_path / "incoming")
    old, _ = staging.put_stream(io.BytesIO(b"old upload"))
    young, _ = staging.put_stream(io.BytesIO(b"young upload"))
    leftover = staging.root / ".incoming" / "tmpcrash"
    leftover.mkdir(parents=True)
    then = time.time() - 3600
    os.utime(staging.path(old), (then, then))
    os.utime(leftover, (then, then))
    assert staging.prune(1800) == [old]
    assert not staging.has(old) and staging.has(young) and not leftover.exists()
    os.utime(staging.path(young), (then, then))
    staging.touch(young)
    assert staging.prune(1800) == [] and staging.has(young)
    assert staging.prune(0, now=time.time() + 1) == [young]


def qcow2_image(backing: bytes | None = None, incompatible: int = 0) -> bytes:
    """A complete small qcow2 v3 image (512-byte clusters) built by our own writer."""
    header = qcow2.Header(
        cluster_bits=9,
        size=1 << 30,
        incompatible=incompatible,
        refcount_table_offset=512,
        refcount_table_clusters=1,
        backing_offset=400 if backing else 0,
        backing_size=len(backing or b""),
        backing_name=backing,
        extensions=((qcow2.EXT_BACKING_FORMAT, b"qcow2"),) if backing else (),
    )
    return qcow2.build(header) + bytes(512)


def test_header_accepts_only_content_addressed_backing(tmp_path: Path) -> None:
    image = tmp_path / "img"
    parent = "ab" + "cd" + "e" * 60
    image.write_bytes(qcow2_image(backing_reference(parent).encode()))
    header = read_header(image)
    assert header.format == "qcow2" and header.parent == parent and header.virtual_size == 1 << 30
    for bad in [
        b"/etc/shadow",
        b"../../ab/cd/" + b"f" * 64,
        b"../../../ab/cd/" + parent.encode(),
        b"json:{}",
        b"nbd://host/x",
    ]:
        image.write_bytes(qcow2_image(bad))
        with pytest.raises(IntegrityError, match="not a content-addressed reference"):
            read_header(image)
    image.write_bytes(qcow2_image(incompatible=1 << 2))
    with pytest.raises(IntegrityError, match="external data file"):
        read_header(image)
    image.write_bytes(b"raw bytes")
    with pytest.raises(IntegrityError, match="not a qcow2 image"):
        read_header(image)


def test_signature_split() -> None:
    payload = b"object abc\ntype commit\ntag v1\ntagger x <y> 1 +0000\n\nmsg\n"
    pgp = b"-----BEGIN PGP SIGNATURE-----\nxyz\n-----END PGP SIGNATURE-----\n"
    ssh = b"-----BEGIN SSH SIGNATURE-----\nxyz\n-----END SSH SIGNATURE-----\n"
    assert split_signature(payload) == (payload, None, None)
    assert split_signature(payload + pgp) == (payload, pgp, "gpg")
    assert split_signature(payload + ssh) == (payload, ssh, "ssh")


def test_settings_validation(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="'root'"):
        load_settings({})
    with pytest.raises(BadRequest, match="not a directory"):
        load_settings({"root": str(tmp_path / "missing")})
    with pytest.raises(BadRequest, match="token_sha256"):
        load_settings({"root": str(tmp_path), "users": {"a": {"token": "clear"}}})
    cfg = load_settings({"root": str(tmp_path), "users": {"a": {"token_sha256": "A" * 64}}})
    assert cfg.users == {"a": "a" * 64} and not cfg.read_protected
    assert cfg.staging_ttl_seconds == DEFAULT_STAGING_TTL == 24 * 3600
    assert (
        load_settings({"root": str(tmp_path), "staging_ttl_seconds": 60}).staging_ttl_seconds == 60
    )
    for bad in (-1, "soon", None, float("nan")):
        with pytest.raises(BadRequest, match="staging_ttl_seconds"):
            load_settings({"root": str(tmp_path), "staging_ttl_seconds": bad})


def test_event_signature_and_subscriber_secrets(monkeypatch) -> None:
    body = b'{"version": 1}'
    assert signature(body, b"k") == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    monkeypatch.setenv("HOOK_SECRET", "from-env")
    assert Subscriber("http://x", secret_env="HOOK_SECRET").resolve_secret() == b"from-env"
    monkeypatch.delenv("HOOK_SECRET")
    with pytest.raises(BadRequest, match="HOOK_SECRET unset"):
        Subscriber("http://x", secret_env="HOOK_SECRET").resolve_secret()


def test_repo_config_errors_say_where(tmp_path: Path) -> None:
    (tmp_path / "collective.json").write_text('{"subscribers": [{"nourl": 1}]}')
    with pytest.raises(BadRequest, match=r"subscribers\[0\] needs a 'url'"):
        repo_config.load(tmp_path)
    (tmp_path / "collective.json").write_text("{broken")
    with pytest.raises(BadRequest, match=r"collective.json:1:2: invalid JSON"):
        repo_config.load(tmp_path)
