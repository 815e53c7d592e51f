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
layout: the repository's store or a client's cache. Every object is checked by our own parser
(`reposerver.qcow2`: qcow2 v3, backing format qcow2, backing name such a reference, no external
data file, no encryption, not truncated), at push and again by the runner after fetching, and
every qemu-img call names its formats, so a pushed image can never make qemu open a host path
or probe a format. A publisher's raw image is converted to qcow2 by `cui publish`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reposerver import qcow2
from reposerver.errors import IntegrityError, ToolFailed
from reposerver.objects import ObjectStore, backing_reference

OVERLAY_CLUSTER_SIZE = 4096
MAX_CHAIN = 1000


@dataclass(frozen=True)
class ImageHeader:
    """What the header of a stored image says: format, virtual size, parent object (if any)."""

    format: str
    virtual_size: int | None
    parent: str | None


def read_header(path: Path, where: str = "image") -> ImageHeader:
    """Parse and check the header of a disk object with our own parser (never qemu).

    Every object must meet `reposerver.qcow2.check_object`: qcow2 v3, complete, unencrypted,
    no external data file, backing format qcow2, backing name a content-addressed reference.

    Raises:
        UnsafeImage: anything else (an IntegrityError), naming `where` and the rule broken.
    """
    header = qcow2.read(path, where)
    parent = qcow2.check_object(header, where)
    return ImageHeader("qcow2", header.size, parent)


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


def check_fetched_chain(links: Sequence[tuple[str, Path]]) -> None:
    """The runner's own check of a fetched chain `(object id, path)`, base first.

    Whatever the server said, signed or not: every object meets the policy, the base has no
    backing file and each overlay's backing name is exactly the object before it. Call before
    any qemu process opens the chain.

    Raises:
        IntegrityError: an empty chain, an unsafe object, or links that do not follow.
    """
    if not links:
        raise IntegrityError("empty disk chain")
    expected: str | None = None
    for oid, path in links:
        parent = read_header(path, f"object sha256:{oid}").parent
        if parent != expected:
            raise IntegrityError(
                f"object sha256:{oid}: its backing file is "
                f"{'sha256:' + parent if parent else 'none'}, the chain says "
                f"{'sha256:' + expected if expected else 'none'}"
            )
        expected = oid


def _qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if result.returncode not in (0, 1) or (result.returncode == 1 and args[0] != "compare"):
        raise ToolFailed(f"qemu-img {' '.join(args)}: {result.stderr.strip() or result.stdout}")
    return result


def image_format(path: Path) -> str:
    """`qcow2` when a publisher's local image starts with the qcow2 magic, else `raw`.

    Decided by the magic ourselves, never by qemu's probing; the format is then named
    explicitly in every qemu-img call on the image, and a local overlay must record its own
    backing file's format (else qemu would probe that file).

    Raises:
        UnsafeImage: a qcow2 image whose header does not parse.
        IntegrityError: a qcow2 overlay without a recorded backing format.
    """
    with open(path, "rb") as f:
        if f.read(4) != qcow2.MAGIC:
            return "raw"
    header = qcow2.read(path)
    if header.backing_name is not None and header.extension(qcow2.EXT_BACKING_FORMAT) is None:
        raise IntegrityError(
            f"{path}: its backing file's format is not recorded, so qemu would guess it; "
            "publish a self-contained image or recreate the overlay with -F FORMAT"
        )
    return "qcow2"


def same_content(a: Path, a_format: str, b: Path, b_format: str | None = None) -> bool:
    """True when images `a` and `b` have identical guest-visible data.

    `b_format` defaults to what `b`'s header says (for a stored object, checked as untrusted).
    """
    b_format = b_format or read_header(b, str(b)).format
    result = _qemu_img("compare", "-f", a_format, "-F", b_format, str(a), str(b))
    return result.returncode == 0


def store_base(store: ObjectStore, image: Path) -> str:
    """Store `image` as a self-contained qcow2 v3 object; return its id.

    A local qcow2 image that already meets the policy without a backing file is stored as it
    is; anything else (raw, qcow2 v2, an overlay of the publisher's own files...) is converted
    with `qemu-img convert -f FORMAT -O qcow2`, so every stored object is qcow2.
    """
    fmt = image_format(image)
    if fmt == "qcow2" and _standalone(image):
        return store.put_file(image)[0]
    with store.workspace() as scratch:
        out = scratch / "base.qcow2"
        _qemu_img("convert", "-f", fmt, "-O", "qcow2", "-o", "compat=1.1", str(image), str(out))
        read_header(out, str(image))
        return store.put_file(out)[0]


def _standalone(image: Path) -> bool:
    try:
        return read_header(image, str(image)).parent is None
    except IntegrityError:
        return False


def write_delta(image: Path, parent_path: Path, parent: str, out: Path) -> None:
    """Write to `out` an overlay of `image` over the object `parent` (found at `parent_path`).

    The overlay holds only the clusters where `image` differs from the parent's data; its
    backing-file name is the content-addressed reference to `parent`, so it resolves once `out`
    is stored in (or copied into) a Git LFS object layout that holds the parent.

    Raises:
        IntegrityError: the overlay does not reproduce `image` (checked before the backing name
            is rewritten, while it still points at `parent_path`).
    """
    fmt = image_format(image)
    parent_path = parent_path.resolve()
    parent_fmt = read_header(parent_path, str(parent_path)).format
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
    fmt = image_format(image)
    chain(store, parent)  # the whole stored chain meets the policy before qemu opens it
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
