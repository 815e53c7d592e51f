"""Program disks as chains of content-addressed qcow2 objects, built and checked with qemu-img.

Version 1 of a disk is stored as one self-contained qcow2 object. Version N+1 is stored as a
qcow2 overlay holding only the clusters that differ from version N: an empty overlay over the
new image is rebased in qemu-img's *safe* mode onto version N's object, which compares the data
and keeps only differing clusters (`qemu-img convert -B` would copy every allocated cluster).
Overlays use 4 KiB clusters: with 64 KiB clusters a 1% random change of 4 KiB blocks costs ~15x
the changed bytes, with 4 KiB about 1.2x; the price is larger L2 tables and slower sequential
I/O on the (thin) overlay, which the utility only reads through its own instance overlay.

The overlay's backing-file name is `../../ab/cd/<parent sha256>` (see
`objects.backing_reference`), so the chain resolves in any directory with the Git LFS object
layout: the repository's store or a client's cache. Untrusted images are checked by reading the
qcow2 header ourselves: a backing name that is not such a reference, or an external data file,
is refused, so a pushed image can never make qemu open a host path.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from reposerver.errors import IntegrityError, ToolFailed
from reposerver.objects import ObjectStore, backing_reference

OVERLAY_CLUSTER_SIZE = 4096
QCOW2_MAGIC = b"QFI\xfb"
_BACKING_REF = re.compile(r"\.\./\.\./([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})")
_INCOMPAT_DATA_FILE = 1 << 2
MAX_CHAIN = 1000


@dataclass(frozen=True)
class ImageHeader:
    """What the header of a stored image says: format, virtual size, parent object (if any)."""

    format: str
    virtual_size: int | None
    parent: str | None


def read_header(path: Path, where: str = "image") -> ImageHeader:
    """Parse the header of a stored disk image without qemu (safe on untrusted bytes).

    A file that does not start with the qcow2 magic is a raw image.

    Raises:
        IntegrityError: a qcow2 image whose backing name is not a content-addressed reference,
            or that uses an external data file.
    """
    with open(path, "rb") as f:
        head = f.read(104)
        if not head.startswith(QCOW2_MAGIC):
            return ImageHeader("raw", path.stat().st_size, None)
        if len(head) < 72:
            raise IntegrityError(f"{where}: truncated qcow2 header")
        version, backing_offset, backing_size, _bits, size = struct.unpack(">IQIIQ", head[4:32])
        if version >= 3 and len(head) >= 80:
            (incompatible,) = struct.unpack(">Q", head[72:80])
            if incompatible & _INCOMPAT_DATA_FILE:
                raise IntegrityError(
                    f"{where}: qcow2 images with an external data file are refused"
                )
        parent = None
        if backing_offset:
            if backing_size > 1023:
                raise IntegrityError(f"{where}: qcow2 backing file name too long")
            f.seek(backing_offset)
            name = f.read(backing_size).decode("ascii", errors="replace")
            match = _BACKING_REF.fullmatch(name)
            if not match or match.group(3)[:4] != match.group(1) + match.group(2):
                raise IntegrityError(
                    f"{where}: qcow2 backing file {name!r} is not a content-addressed reference "
                    "'../../ab/cd/<sha256>' to another object of the repository"
                )
            parent = match.group(3)
    return ImageHeader("qcow2", size, parent)


def chain(store: ObjectStore, top: str) -> list[str]:
    """The object ids of the disk whose top object is `top`, base first.

    Raises:
        NotFound: an object of the chain is missing.
        IntegrityError: an object is corrupt, unsafe, or the chain loops.
    """
    ids: list[str] = []
    current: str | None = top
    while current is not None:
        if current in ids or len(ids) >= MAX_CHAIN:
            raise IntegrityError(f"object sha256:{top}: backing chain loops or is too long")
        path = store.verified_path(current)
        ids.append(current)
        current = read_header(path, f"object sha256:{current}").parent
    ids.reverse()
    return ids


def _qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if result.returncode not in (0, 1) or (result.returncode == 1 and args[0] != "compare"):
        raise ToolFailed(f"qemu-img {' '.join(args)}: {result.stderr.strip() or result.stdout}")
    return result


def image_format(path: Path) -> str:
    """The format qemu-img detects for a publisher's image (`qcow2`, `raw`, ...)."""
    info = json.loads(_qemu_img("info", "--output=json", str(path)).stdout)
    if info.get("backing-filename"):
        return f"{info['format']}+backing"
    return str(info["format"])


def same_content(a: Path, a_format: str, b: Path, b_format: str | None = None) -> bool:
    """True when images `a` and `b` have identical guest-visible data.

    `b_format` defaults to what `b`'s header says (for a stored object, checked as untrusted).
    """
    b_format = b_format or read_header(b).format
    result = _qemu_img("compare", "-f", a_format, "-F", b_format, str(a), str(b))
    return result.returncode == 0


def store_base(store: ObjectStore, image: Path) -> str:
    """Store `image` as a self-contained qcow2 object; return its id."""
    fmt = image_format(image)
    if fmt == "qcow2":
        read_header(image, str(image))
        return store.put_file(image)[0]
    with store.workspace() as scratch:
        out = scratch / "base.qcow2"
        _qemu_img("convert", "-O", "qcow2", str(image), str(out))
        return store.put_file(out)[0]


def write_delta(image: Path, parent_path: Path, parent: str, out: Path) -> None:
    """Write to `out` an overlay of `image` over the object `parent` (found at `parent_path`).

    The overlay holds only the clusters where `image` differs from the parent's data; its
    backing-file name is the content-addressed reference to `parent`, so it resolves once `out`
    is stored in (or copied into) a Git LFS object layout that holds the parent.

    Raises:
        IntegrityError: the overlay does not reproduce `image` (checked before the backing name
            is rewritten, while it still points at `parent_path`).
    """
    fmt = image_format(image).replace("+backing", "")
    parent_path = parent_path.resolve()
    parent_fmt = read_header(parent_path).format
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-o", f"cluster_size={OVERLAY_CLUSTER_SIZE}",
        "-b", str(image.resolve()), "-F", fmt, str(out),
    )  # fmt: skip
    _qemu_img("rebase", "-f", "qcow2", "-b", str(parent_path), "-F", parent_fmt, str(out))
    if not same_content(image, fmt, out, "qcow2"):
        raise IntegrityError(f"{image}: the overlay does not reproduce the image")
    _qemu_img(
        "rebase", "-u", "-f", "qcow2", "-b", backing_reference(parent), "-F", parent_fmt, str(out)
    )  # fmt: skip


def store_delta(store: ObjectStore, image: Path, parent: str) -> str:
    """Store `image` as an overlay of object `parent` holding only differing clusters.

    Returns the parent id itself when the image's data equals the parent's.
    """
    fmt = image_format(image).replace("+backing", "")
    parent_path = store.verified_path(parent).resolve()
    if same_content(image, fmt, parent_path):
        return parent
    with store.workspace() as scratch:
        out = scratch / "delta.qcow2"
        write_delta(image, parent_path, parent, out)
        return store.put_file(out)[0]


def qemu_img_available() -> bool:
    """True when qemu-img is on PATH."""
    return shutil.which("qemu-img") is not None
