"""Name and path validation (the one place traversal is refused), LFS pointers, tokens."""

from __future__ import annotations

import base64
import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reposerver import lfs_pointer
from reposerver.auth import authenticated_user, token_digest
from reposerver.errors import BadRequest, IntegrityError
from reposerver.names import (
    file_path,
    git_repository_name,
    object_id,
    repository_name,
    request_path,
    version_number,
    version_of_ref,
)

path_text = st.lists(
    st.sampled_from(list("ab./\\%\x00-_") + ["..", "/..", "../"]), max_size=15
).map("".join)


@given(path_text)
def test_accepted_file_paths_never_leave_the_version(text: str) -> None:
    try:
        accepted = file_path(text)
    except BadRequest as exc:
        assert repr(text) in str(exc)
        return
    assert not accepted.startswith("/")
    normal = posixpath.normpath(accepted)
    assert normal == accepted and ".." not in normal.split("/") and "\x00" not in accepted


@given(path_text)
def test_request_paths_with_dot_segments_are_refused(text: str) -> None:
    path = "/" + text
    segments = path.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()
    bad = any(s in ("", ".", "..") or "\\" in s or "\x00" in s for s in segments)
    if bad:
        with pytest.raises(BadRequest):
            request_path(path)
    else:
        assert request_path(path) == path


@given(st.integers(min_value=1, max_value=999_999_999))
def test_version_numbers_round_trip(n: int) -> None:
    assert version_number(str(n)) == n
    assert version_of_ref(b"refs/tags/v%d" % n) == n


@pytest.mark.parametrize("text", ["", "0", "01", "-1", "+1", "1.0", "1e3", " 1", "v1", "１"])
def test_bad_version_numbers(text: str) -> None:
    with pytest.raises(BadRequest, match="positive integers"):
        version_number(text)


@pytest.mark.parametrize(
    "ref",
    [
        b"refs/tags/v0",
        b"refs/tags/v01",
        b"refs/tags/V1",
        b"refs/heads/v1",
        b"refs/tags/v1x",
        b"refs/tags/v",
    ],
)
def test_refs_that_are_not_versions(ref: bytes) -> None:
    assert version_of_ref(ref) is None


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "x.git", "", "a" * 101, "a b", "a\x00"])
def test_bad_repository_names(name: str) -> None:
    with pytest.raises(BadRequest, match="invalid repository name"):
        repository_name(name)


def test_git_prefix_maps_to_name_without_joining_paths() -> None:
    assert git_repository_name("/DNS.git") == "DNS"
    assert git_repository_name("DNS.git") == "DNS"
    for bad in ["/../etc.git", "/etc/passwd", "/a/b.git", "/.git"]:
        with pytest.raises(BadRequest):
            git_repository_name(bad)


def test_object_ids() -> None:
    assert object_id("a" * 64) == "a" * 64
    for bad in ["A" * 64, "a" * 63, "g" * 64, "../" + "a" * 61]:
        with pytest.raises(BadRequest):
            object_id(bad)


@given(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), st.integers(0, 2**62))
def test_lfs_pointer_round_trip(oid: str, size: int) -> None:
    pointer = lfs_pointer.Pointer(oid, size)
    data = pointer.encode()
    assert lfs_pointer.looks_like_pointer(data)
    assert lfs_pointer.parse(data) == pointer


@given(st.binary(max_size=300))
def test_lfs_pointer_parser_never_crashes(data: bytes) -> None:
    try:
        lfs_pointer.parse(data, "x")
    except IntegrityError as exc:
        assert str(exc).startswith("x")


@pytest.mark.parametrize(
    "data",
    [
        b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n",
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize -1\n",
        b"version https://git-lfs.github.com/spec/v1\noid md5:" + b"a" * 64 + b"\nsize 1\n",
        b"version https://git-lfs.github.com/spec/v1\noid sha256:"
        + b"a" * 64
        + b"\nsize 1\nsize 2\n",
        b"version https://example.org/v9\noid sha256:" + b"a" * 64 + b"\nsize 1\n",
    ],
)
def test_malformed_pointers(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        lfs_pointer.parse(data)


def _basic(user: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


def test_basic_auth_against_token_digests() -> None:
    users = {"alice": token_digest("t1")}
    assert authenticated_user(_basic("alice", "t1"), users) == "alice"
    assert authenticated_user(_basic("alice", "t2"), users) is None
    assert authenticated_user(_basic("bob", "t1"), users) is None
    for header in [
        None,
        "",
        "Bearer t1",
        "Basic !!!",
        "Basic " + base64.b64encode(b"nocolon").decode(),
    ]:
        assert authenticated_user(header, users) is None


@given(header=st.one_of(st.text(max_size=80), st.binary(max_size=60).map(
    lambda raw: "Basic " + base64.b64encode(raw).decode()
)))  # fmt: skip
def test_basic_auth_never_raises_and_only_the_token_authenticates(header: str) -> None:
    users = {"alice": token_digest("t1")}
    who = authenticated_user(header, users)
    assert who is None or header.lower().startswith("basic ")
    if who is not None:
        raw = base64.b64decode(header.split(" ", 1)[1]).decode()
        assert raw == "alice:t1"
