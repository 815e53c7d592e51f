"""A CVL bundle: what a user submits to start or update a VAP, checked before anything uses it.

A bundle is the user's CVL file plus the files of every plain `file:` directory it imports that
lies inside the bundle root (the directory of the user's file): `root_dir` is where the user's
file was (an absolute path, kept only so that imports and origins are named as the user wrote
them), `root` the user's file relative to it, and `files` every bundled file by its relative
path. The daemon evaluates from the bundle it stored, never from the user's directory: an import
inside `root_dir` is answered from `files`, and one outside it is refused for users (the daemon
does not read its own file system on a user's behalf).

Pure: validation, digests and the wire form (base64) only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from utility.errors import UtilityError

MAX_FILES = 256
MAX_BYTES = 8 << 20
"""A bundle is the CVL and small appliance files, not a disk farm: larger ones are refused (its
base64 form must fit in one API request, `validation.MAX_REQUEST_BYTES`)."""
MAX_PATH = 512
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
"""A VAP name: letters, digits, '.', '_' and '-', starting with a letter or digit, ≤ 63."""
QCOW2_MAGIC = b"QFI\xfb"


class BundleError(UtilityError):
    """A bundle that cannot be used (malformed, too large, naming files outside itself)."""


def check_vap_name(name: str) -> str:
    """`name` if it is a valid VAP name, else a BundleError saying what a name may be."""
    if not isinstance(name, str) or not NAME.match(name):
        raise BundleError(
            f"VAP name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (at most 63 characters)"
        )
    return name


def default_name(root: str) -> str:
    """The default VAP name of a CVL file: its stem (`web.cvl` -> `web`), checked."""
    stem = PurePosixPath(root).name
    stem = stem[: -len(".cvl")] if stem.endswith(".cvl") else stem
    return check_vap_name(stem)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def check_relative(path: str, what: str) -> str:
    """`path` if it is a clean relative POSIX path inside the bundle (no `..`, no absolute
    path, no hidden part, no backslash, NUL or lone surrogate)."""
    pure = PurePosixPath(path)
    if (
        not isinstance(path, str)
        or not path
        or not _utf8(path)
        or len(path) > MAX_PATH
        or pure.is_absolute()
        or "\\" in path
        or "\0" in path
        or str(pure) != path
        or any(part in ("", ".", "..") or part.startswith(".") for part in pure.parts)
    ):
        raise BundleError(f"{what} {path!r} is not a clean relative path inside the bundle")
    return path


def qcow2_backing(data: bytes) -> bool:
    """Whether `data` is a qcow2 image that names a backing file (it could name any file of the
    daemon's host: a bundled disk must stand alone)."""
    return len(data) >= 16 and data[:4] == QCOW2_MAGIC and int.from_bytes(data[8:16], "big") != 0


@dataclass(frozen=True)
class Bundle:
    """A user's CVL file and the bundled files of its imports (see the module docstring)."""

    root_dir: str
    root: str
    files: dict[str, bytes]

    def __post_init__(self) -> None:
        root_dir = self.root_dir
        if (
            not isinstance(root_dir, str)
            or not _utf8(root_dir)
            or not root_dir.startswith("/")
            or "\0" in root_dir
            or "\\" in root_dir
            or len(root_dir) > 4096
            or str(PurePosixPath(root_dir)) != root_dir
            or ".." in PurePosixPath(root_dir).parts
        ):
            raise BundleError(f"bundle root_dir {root_dir!r} must be a normalised absolute path")
        if len(self.files) > MAX_FILES:
            raise BundleError(f"bundle has {len(self.files)} files; at most {MAX_FILES} allowed")
        total = 0
        for name, data in self.files.items():
            check_relative(name, "bundled file")
            if not isinstance(data, bytes):
                raise BundleError(f"bundled file {name!r} has no bytes")
            if qcow2_backing(data):
                raise BundleError(
                    f"bundled file {name!r} is a qcow2 image with a backing file; bundled disks "
                    "must stand alone (qemu-img convert it, or publish it to a repository)"
                )
            total += len(data)
        if total > MAX_BYTES:
            raise BundleError(
                f"bundle is {total} bytes; at most {MAX_BYTES} allowed (publish large disks to "
                "a repository instead)"
            )
        check_relative(self.root, "bundle root file")
        if self.root not in self.files:
            raise BundleError(f"bundle root file {self.root!r} is not among its files")
        try:
            self.files[self.root].decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"bundle root file {self.root!r} is not UTF-8 text") from None

    @property
    def text(self) -> str:
        """The user's CVL text."""
        return self.files[self.root].decode("utf-8")

    @property
    def root_path(self) -> str:
        """Where the user's file was (how its errors and imports are named)."""
        return f"{self.root_dir}/{self.root}"

    def manifest(self) -> dict[str, str]:
        """Bundled path -> sha256 of its bytes."""
        return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(self.files.items())}

    def digest(self) -> str:
        """The bundle's identity: sha256 of its root_dir, root and manifest."""
        return manifest_digest(self.root_dir, self.root, self.manifest())

    def to_wire(self) -> dict[str, Any]:
        """The JSON form (file contents base64)."""
        return {
            "root_dir": self.root_dir,
            "root": self.root,
            "files": {
                k: base64.b64encode(v).decode("ascii") for k, v in sorted(self.files.items())
            },
        }

    @classmethod
    def from_wire(cls, data: object) -> Bundle:
        """A bundle from its JSON form, every field checked."""
        if not isinstance(data, dict):
            raise BundleError("field 'bundle' must be an object with root_dir, root and files")
        unknown = set(data) - {"root_dir", "root", "files"}
        if unknown:
            raise BundleError(f"bundle has unknown fields: {', '.join(sorted(map(str, unknown)))}")
        files = data.get("files")
        root_dir, root = data.get("root_dir"), data.get("root")
        if (
            not isinstance(files, dict)
            or not isinstance(root_dir, str)
            or not isinstance(root, str)
        ):
            raise BundleError("bundle needs root_dir and root (strings) and files (an object)")
        if len(files) > MAX_FILES:
            raise BundleError(f"bundle has {len(files)} files; at most {MAX_FILES} allowed")
        decoded: dict[str, bytes] = {}
        for name, text in files.items():
            if not isinstance(name, str) or not isinstance(text, str):
                raise BundleError("bundle files must map paths to base64 strings")
            try:
                decoded[name] = base64.b64decode(text.encode("ascii"), validate=True)
            except (ValueError, UnicodeEncodeError):
                raise BundleError(f"bundled file {name!r} is not valid base64") from None
        return cls(root_dir, root, decoded)


def manifest_digest(root_dir: str, root: str, manifest: dict[str, str]) -> str:
    """sha256 over the canonical JSON of a bundle's identity."""
    canonical = json.dumps(
        {"root_dir": root_dir, "root": root, "files": manifest}, sort_keys=True
    ).encode()
    return hashlib.sha256(canonical).hexdigest()
