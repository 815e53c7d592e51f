"""Our own qcow2 header parser and the policy every published disk object must meet.

Pure (bytes in, facts or `UnsafeImage` out), so the server's push checks and the utility's
fetch checks run the same code on untrusted bytes and qemu never probes a published object.

Policy (`check_object`): qcow2 version 3 only (v2 has no incompatible-feature field, so it
cannot say whether an image needs features we do not know; every qemu since 1.7 writes v3),
a complete header inside a complete first cluster, no encryption, no external data file, no
incompatible feature beyond compression type and extended L2 entries, the L1 and refcount
tables inside the file (a truncated image is refused), and when there is a backing file: its
format recorded in the header extension and equal to `qcow2`, and its name exactly
`../../ab/cd/<sha256>` (the store-relative name of another object of the same store).

`build` writes a header from a `Header`, so tests construct the hostile images themselves.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from reposerver.errors import UnsafeImage

MAGIC = b"QFI\xfb"
V2_HEADER = 72
V3_HEADER = 104
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_BACKING_NAME = 1023

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
ALLOWED_INCOMPAT = INCOMPAT_COMPRESSION | INCOMPAT_EXTENDED_L2
COMPRESSION_TYPES = (0, 1)  # zlib, zstd

BACKING_REFERENCE = re.compile(r"\.\./\.\./([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})")
_FIXED = struct.Struct(">4sIQIIQIIQQIIQ")  # the 72 bytes every version has
_V3 = struct.Struct(">QQQII")  # features, refcount order, header length (bytes 72..104)


@dataclass(frozen=True)
class Header:
    """The fields of a qcow2 header and its extensions (what `parse` reads, `build` writes)."""

    version: int = 3
    backing_offset: int = 0
    backing_size: int = 0
    cluster_bits: int = 16
    size: int = 1 << 20
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = V3_HEADER
    compression_type: int = 0
    extensions: tuple[tuple[int, bytes], ...] = ()
    backing_name: bytes | None = None
    magic: bytes = MAGIC
    extra: bytes = field(default=b"", compare=False)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    def extension(self, kind: int) -> bytes | None:
        """The data of the first extension of `kind`, if any."""
        return next((data for k, data in self.extensions if k == kind), None)


def _fail(where: str, problem: str) -> UnsafeImage:
    return UnsafeImage(f"{where}: {problem}")


def parse(data: bytes, where: str = "image") -> Header:
    """Parse the header, its extensions and the backing name from the image's first cluster.

    `data` is the start of the file (at least the first cluster when the file has one).

    Raises:
        UnsafeImage: not qcow2, or a header that is truncated or inconsistent.
    """
    if len(data) < 4 or data[:4] != MAGIC:
        raise _fail(where, "not a qcow2 image (every disk object must be qcow2)")
    if len(data) < V2_HEADER:
        raise _fail(where, f"truncated qcow2 header ({len(data)} bytes)")
    fields = _FIXED.unpack_from(data, 0)
    header = Header(*fields[1:], magic=fields[0])  # type: ignore[misc]
    if header.version not in (2, 3):
        raise _fail(where, f"unknown qcow2 version {header.version}")
    if header.version == 3:
        if len(data) < V3_HEADER:
            raise _fail(where, f"truncated qcow2 v3 header ({len(data)} bytes)")
        incompat, compat, autoclear, order, length = _V3.unpack_from(data, V2_HEADER)
        header = replace(
            header,
            incompatible=incompat,
            compatible=compat,
            autoclear=autoclear,
            refcount_order=order,
            header_length=length,
        )
        if length < V3_HEADER or length % 8:
            raise _fail(where, f"bad qcow2 header length {length}")
        if length > V3_HEADER:
            if len(data) < V3_HEADER + 1:
                raise _fail(where, "truncated qcow2 header (compression type)")
            header = replace(header, compression_type=data[V3_HEADER])
    else:
        header = replace(header, header_length=V2_HEADER, refcount_order=4)
    if not MIN_CLUSTER_BITS <= header.cluster_bits <= MAX_CLUSTER_BITS:
        raise _fail(where, f"bad qcow2 cluster size 2^{header.cluster_bits}")
    if len(data) < header.cluster_size:
        raise _fail(
            where, f"truncated qcow2 image: the first cluster is incomplete ({len(data)} bytes)"
        )
    if header.header_length > header.cluster_size:
        raise _fail(where, "qcow2 header longer than its cluster")
    header = replace(header, extensions=_extensions(data, header, where))
    return replace(header, backing_name=_backing_name(data, header, where))


def _extensions(data: bytes, header: Header, where: str) -> tuple[tuple[int, bytes], ...]:
    found: list[tuple[int, bytes]] = []
    offset = header.header_length
    end = header.cluster_size
    while True:
        if offset + 8 > end:
            raise _fail(where, "qcow2 header extensions run past the first cluster")
        kind, length = struct.unpack_from(">II", data, offset)
        offset += 8
        if kind == EXT_END:
            return tuple(found)
        if offset + length > end:
            raise _fail(where, f"qcow2 header extension 0x{kind:08x} runs past the first cluster")
        found.append((kind, bytes(data[offset : offset + length])))
        offset += (length + 7) & ~7


def _backing_name(data: bytes, header: Header, where: str) -> bytes | None:
    if not header.backing_offset:
        return None
    start, size = header.backing_offset, header.backing_size
    if size == 0 or size > MAX_BACKING_NAME or start + size > header.cluster_size:
        raise _fail(where, "qcow2 backing file name is empty, too long or outside the header")
    return bytes(data[start : start + size])


def check_object(header: Header, where: str = "image") -> str | None:
    """Apply the publishing policy (module docstring); return the parent object id, if any.

    Raises:
        UnsafeImage: the first rule broken, naming it (never the image's own bytes).
    """
    if header.version != 3:
        raise _fail(
            where, f"qcow2 version {header.version} is refused; only version 3 (compat=1.1)"
        )
    if header.crypt_method != 0 or header.extension(EXT_CRYPTO) is not None:
        raise _fail(where, "encrypted qcow2 images are refused")
    if header.incompatible & INCOMPAT_DATA_FILE or header.extension(EXT_DATA_FILE) is not None:
        raise _fail(where, "qcow2 images with an external data file are refused")
    unknown = header.incompatible & ~ALLOWED_INCOMPAT
    if unknown:
        raise _fail(where, f"qcow2 incompatible feature bits 0x{unknown:x} are refused")
    if header.compression_type not in COMPRESSION_TYPES:
        raise _fail(where, f"unknown qcow2 compression type {header.compression_type}")
    if header.refcount_order > 6:
        raise _fail(where, f"bad qcow2 refcount order {header.refcount_order}")
    if header.backing_name is None:
        if header.extension(EXT_BACKING_FORMAT) not in (None, b"qcow2"):
            raise _fail(where, "qcow2 backing format names something other than qcow2")
        return None
    backing_format = header.extension(EXT_BACKING_FORMAT)
    if backing_format is None:
        raise _fail(where, "qcow2 backing format is not recorded (create overlays with -F qcow2)")
    if backing_format != b"qcow2":
        raise _fail(where, "qcow2 backing format is not qcow2 (every object of a chain is qcow2)")
    return parent_of(header.backing_name, where)


def parent_of(name: bytes, where: str) -> str:
    """The object id a backing name `../../ab/cd/<sha256>` refers to.

    Raises:
        UnsafeImage: any other name (a host path, another repository, a URL, `json:`...).
    """
    match = BACKING_REFERENCE.fullmatch(name.decode("ascii", errors="replace"))
    if not match or match.group(3)[:4] != match.group(1) + match.group(2):
        raise _fail(
            where,
            "qcow2 backing file is not a content-addressed reference '../../ab/cd/<sha256>' "
            "to another object of the repository",
        )
    return match.group(3)


def check_extent(header: Header, file_size: int, where: str = "image") -> None:
    """Refuse an image whose L1 or refcount table lies past the end of the file (truncated)."""
    tables = [
        ("L1 table", header.l1_table_offset, header.l1_size * 8),
        (
            "refcount table",
            header.refcount_table_offset,
            header.refcount_table_clusters * header.cluster_size,
        ),
    ]
    for name, offset, length in tables:
        if length and (offset == 0 or offset + length > file_size):
            raise _fail(where, f"truncated qcow2 image: its {name} lies past the end of the file")
    if header.refcount_table_clusters == 0:
        raise _fail(where, "qcow2 image without a refcount table")


def read(path: Path, where: str | None = None) -> Header:
    """Read and parse the header of the image at `path` (at most its first cluster)."""
    where = where or str(path)
    with open(path, "rb") as f:
        head = f.read(V3_HEADER + 8)
        bits = struct.unpack_from(">I", head, 20)[0] if len(head) >= 24 else 0
        if head[:4] == MAGIC and MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
            head += f.read((1 << bits) - len(head))
        size = f.seek(0, 2)
    header = parse(head, where)
    check_extent(header, size, where)
    return header


def checked_parent(path: Path, where: str | None = None) -> str | None:
    """Read `path` and apply the whole policy; return its parent object id (None for a base)."""
    return check_object(read(path, where), where or str(path))


def build(header: Header) -> bytes:
    """The first cluster of an image with `header` (for tests that construct hostile images).

    Extensions follow the header (end marker appended), then the backing name; offsets and
    sizes given in `header` are written as they are, so they may lie.
    """
    out = bytearray(header.cluster_size)
    values = [getattr(header, name) for name in _FIELD_NAMES]
    _FIXED.pack_into(out, 0, header.magic, *values)
    if header.version >= 3:
        _V3.pack_into(
            out, V2_HEADER, header.incompatible, header.compatible, header.autoclear,
            header.refcount_order, header.header_length,
        )  # fmt: skip
        if header.header_length > V3_HEADER:
            out[V3_HEADER] = header.compression_type
    offset = header.header_length if header.version >= 3 else V2_HEADER
    for kind, data in (*header.extensions, (EXT_END, b"")):
        struct.pack_into(">II", out, offset, kind, len(data))
        out[offset + 8 : offset + 8 + len(data)] = data
        offset += 8 + ((len(data) + 7) & ~7)
    if header.backing_name is not None:
        out[header.backing_offset : header.backing_offset + len(header.backing_name)] = (
            header.backing_name
        )
    return bytes(out[: header.cluster_size]) + header.extra


_FIELD_NAMES = (
    "version", "backing_offset", "backing_size", "cluster_bits", "size", "crypt_method",
    "l1_size", "l1_table_offset", "refcount_table_offset", "refcount_table_clusters",
    "nb_snapshots", "snapshots_offset",
)  # fmt: skip
