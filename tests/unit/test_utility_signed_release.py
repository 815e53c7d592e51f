"""The utility's own walk of a signed commit's tree (`utility.adapters.signed_release`),
against trees and blobs that dulwich encodes: every file is found and accepted with its bytes,
refused with any other bytes; a served object whose hash does not match is refused."""

from __future__ import annotations

import hashlib

import pytest
from dulwich.object_store import MemoryObjectStore
from dulwich.objects import Blob, Commit, Tree
from hypothesis import given
from hypothesis import strategies as st

from reposerver.lfs_pointer import Pointer
from utility.adapters.signed_release import SignedRelease
from utility.errors import TrustRefused

NAMES = st.text(alphabet="abcdefghij._-", min_size=1, max_size=8).filter(
    lambda n: n not in (".", "..")
)
FILES = st.dictionaries(
    st.lists(NAMES, min_size=1, max_size=3).map("/".join),
    st.binary(max_size=300),
    min_size=1,
    max_size=6,
)


class Reader:
    """Serves git objects from a dulwich store in canonical form, optionally tampered."""

    def __init__(self, store: MemoryObjectStore) -> None:
        self.store = store
        self.tamper: set[str] = set()

    def git_object(self, sha1: str) -> bytes:
        obj = self.store[sha1.encode()]
        body = obj.as_raw_string()
        if sha1 in self.tamper:
            body += b"!"
        return bytes(obj.type_name + b" " + str(len(body)).encode() + b"\0" + body)


def consistent(files: dict[str, bytes]) -> bool:
    """No path is both a file and a directory."""
    return not any(other.startswith(name + "/") for name in files for other in files)


def build(files: dict[str, bytes]) -> tuple[Reader, str]:
    store = MemoryObjectStore()

    def tree_of(entries: dict[str, bytes]) -> bytes:
        tree = Tree()
        groups: dict[str, dict[str, bytes]] = {}
        for path, data in entries.items():
            head, _, rest = path.partition("/")
            if rest:
                groups.setdefault(head, {})[rest] = data
            else:
                blob = Blob.from_string(data)
                store.add_object(blob)
                tree.add(head.encode(), 0o100644, blob.id)
        for head, sub in groups.items():
            tree.add(head.encode(), 0o040000, tree_of(sub))
        store.add_object(tree)
        return tree.id

    commit = Commit()
    commit.tree = tree_of(files)
    commit.author = commit.committer = b"T <t@example.org>"
    commit.author_time = commit.commit_time = 0
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"v1"
    store.add_object(commit)
    return Reader(store), commit.tree.decode()


def release(reader: Reader, root: str) -> SignedRelease:
    return SignedRelease(reader=reader, label="test v1", commit="c" * 40, signer="t", _root=root)


@given(FILES)
def test_every_file_is_found_and_only_its_own_bytes_pass(files: dict[str, bytes]) -> None:
    if not consistent(files):
        return
    reader, root = build(files)
    checked = release(reader, root)
    for name, data in files.items():
        assert checked.blob_id(name) == Blob.from_string(data).id.decode()
        checked.check_file(name, data)
        with pytest.raises(TrustRefused, match="does not match the signed commit"):
            checked.check_file(name, data + b"x")
    with pytest.raises(TrustRefused, match="is not a file of the signed commit"):
        checked.blob_id("no-such-file.zz")


@given(st.binary(min_size=1, max_size=200))
def test_lfs_files_pass_by_their_pointer_and_disks_by_its_oid(content: bytes) -> None:
    oid = hashlib.sha256(content).hexdigest()
    reader, root = build({"disk.qcow2": Pointer(oid, len(content)).encode(), "a.xml": b"<x/>"})
    checked = release(reader, root)
    checked.check_file("disk.qcow2", content)
    checked.check_disk("disk.qcow2", oid)
    with pytest.raises(TrustRefused, match="disk list gives disk.qcow2 as sha256:"):
        checked.check_disk("disk.qcow2", "0" * 64)
    with pytest.raises(TrustRefused, match="not a Git LFS disk"):
        checked.check_disk("a.xml", oid)


def test_a_tampered_tree_object_is_refused() -> None:
    reader, root = build({"a.xml": b"<x/>"})
    reader.tamper.add(root)
    with pytest.raises(TrustRefused, match="its SHA-1 does not match"):
        release(reader, root).check_file("a.xml", b"<x/>")
