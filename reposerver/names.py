"""Validation and normalisation of every name that arrives from outside, in one place.

Repository names, version numbers, file paths inside a version, object ids and ref names all
pass through here before they touch the file system or git, so traversal (`..`, encoded forms
that the WSGI layer already decoded, absolute paths, NUL bytes) is refused uniformly.
"""

from __future__ import annotations

import re

from reposerver.errors import BadRequest

_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PATH_PART = re.compile(r"[A-Za-z0-9._+@=,-]{1,255}")
_VERSION_TAG = re.compile(rb"refs/tags/v([1-9][0-9]{0,8})")


def repository_name(name: str) -> str:
    """Return `name` if it is a valid repository name (letters, digits, `._-`, no `.git` end).

    Raises:
        BadRequest: the name could address something outside the repository root.
    """
    if not _REPO_NAME.fullmatch(name) or name.endswith(".git") or ".." in name:
        raise BadRequest(
            f"invalid repository name {name!r}: use letters, digits, '.', '_', '-' "
            "(at most 100, not starting with '.', not ending in '.git')"
        )
    return name


def git_repository_name(prefix: str) -> str:
    """Map the URL prefix dulwich hands its backend (`/NAME.git` or `NAME.git`) to NAME.

    dulwich's `FileSystemBackend` joins this prefix onto its root with `os.path.join`, which
    silently drops the root for an absolute prefix; we never join it, we validate it.
    """
    stripped = prefix.strip("/")
    if not stripped.endswith(".git"):
        raise BadRequest(f"invalid git repository path {prefix!r}: expected /NAME.git")
    return repository_name(stripped[: -len(".git")])


def version_number(text: str) -> int:
    """Parse a version number (a positive decimal integer without sign or leading zero)."""
    if not _VERSION.fullmatch(text):
        raise BadRequest(f"invalid version {text!r}: versions are positive integers (1, 2, ...)")
    return int(text)


def object_id(text: str) -> str:
    """Return `text` if it is a lower-case hex sha256."""
    if not _SHA256.fullmatch(text):
        raise BadRequest(f"invalid object id {text!r}: expected 64 lower-case hex digits")
    return text


def file_path(text: str) -> str:
    """Validate a relative path of a file inside a version (`dns.xml`, `disks/root.qcow2`).

    Refuses absolute paths, `.` and `..` components, empty components, backslashes, control
    characters and anything outside a conservative character set.
    """
    if not text or text.startswith("/") or len(text) > 1024:
        raise BadRequest(f"invalid file path {text!r}: must be a relative path inside the version")
    for part in text.split("/"):
        if part in ("", ".", "..") or not _PATH_PART.fullmatch(part):
            raise BadRequest(
                f"invalid file path {text!r}: component {part!r} is not allowed "
                "(no '..', '.', empty or special-character components)"
            )
    return text


def request_path(path: str) -> str:
    """Refuse a URL path with `.`/`..` segments, empty segments, backslashes or NUL.

    Applied to every request before routing (WSGI servers have already decoded `%2e%2e` and
    `%2f`), so no route ever sees a path that could climb out of the server root.
    """
    parts = path.split("/")[1:]
    if parts and parts[-1] == "":
        parts.pop()
    for part in parts:
        if part in ("", ".", "..") or "\\" in part or "\x00" in part:
            raise BadRequest(
                f"invalid request path {path!r}: '.', '..' and empty segments are not allowed"
            )
    return path


def version_of_ref(ref: bytes) -> int | None:
    """The N of `refs/tags/vN`, or None for any other ref."""
    match = _VERSION_TAG.fullmatch(ref)
    return int(match.group(1)) if match else None


def version_ref(number: int) -> bytes:
    """The ref name of version `number`."""
    return b"refs/tags/v%d" % number
