"""Git LFS pointer files: the small text blobs that stand in the git tree for a disk image.

Format (https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md):
``version https://git-lfs.github.com/spec/v1\\noid sha256:HEX\\nsize N\\n``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reposerver.errors import IntegrityError

SPEC = b"version https://git-lfs.github.com/spec/v1"
MAX_POINTER_SIZE = 1024
_KEY = re.compile(rb"[a-z0-9.-]+")


@dataclass(frozen=True)
class Pointer:
    """A parsed pointer: the object id (sha256 hex) and the object's size in bytes."""

    oid: str
    size: int

    def encode(self) -> bytes:
        """The canonical pointer file text."""
        return b"%s\noid sha256:%s\nsize %d\n" % (SPEC, self.oid.encode(), self.size)


def looks_like_pointer(data: bytes) -> bool:
    """True when `data` starts like an LFS pointer (then `parse` must succeed or it is broken)."""
    return len(data) <= MAX_POINTER_SIZE and data.startswith(b"version https://git-lfs")


def parse(data: bytes, where: str = "pointer") -> Pointer:
    """Parse a pointer file.

    Raises:
        IntegrityError: `data` is not a well-formed v1 pointer with a sha256 oid.
    """
    if len(data) > MAX_POINTER_SIZE:
        raise IntegrityError(f"{where}: not a Git LFS pointer ({len(data)} bytes is too long)")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if not lines or lines[0] != SPEC:
        raise IntegrityError(f"{where}: not a Git LFS v1 pointer (first line must be {SPEC!r})")
    fields: dict[bytes, bytes] = {}
    for number, line in enumerate(lines[1:], start=2):
        key, sep, value = line.partition(b" ")
        if not sep or not _KEY.fullmatch(key) or key in fields:
            raise IntegrityError(f"{where}: line {number}: malformed pointer line {line!r}")
        fields[key] = value
    oid = fields.get(b"oid", b"")
    size = fields.get(b"size", b"")
    if not re.fullmatch(rb"sha256:[0-9a-f]{64}", oid):
        raise IntegrityError(f"{where}: pointer oid must be 'sha256:' and 64 hex digits")
    if not re.fullmatch(rb"0|[1-9][0-9]{0,18}", size):
        raise IntegrityError(f"{where}: pointer size must be a non-negative integer")
    return Pointer(oid=oid[len(b"sha256:") :].decode(), size=int(size))
