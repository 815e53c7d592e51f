"""Our qcow2 header parser and publishing policy: one test per rule, round trips of headers we
build, and random mutations that may only ever raise `UnsafeImage`."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reposerver import qcow2
from reposerver.disks import check_fetched_chain
from reposerver.errors import IntegrityError, UnsafeImage
from reposerver.objects import backing_reference

PARENT = "abcd" + "e" * 60


def good(backing: str | None = None, **changes: object) -> qcow2.Header:
    """A policy-conforming header with 512-byte clusters (an overlay when `backing` is given)."""
    name = backing_reference(backing).encode() if backing else None
    header = qcow2.Header(
        cluster_bits=9,
        size=1 << 20,
        refcount_table_offset=512,
        refcount_table_clusters=1,
        backing_offset=400 if name else 0,
        backing_size=len(name or b""),
        backing_name=name,
        extensions=((qcow2.EXT_BACKING_FORMAT, b"qcow2"),) if name else (),
    )
    return replace(header, **changes)  # type: ignore[arg-type]


def image(header: qcow2.Header) -> bytes:
    return qcow2.build(header) + bytes(header.cluster_size)


def check(data: bytes) -> str | None:
    header = qcow2.parse(data)
    qcow2.check_extent(header, len(data))
    return qcow2.check_object(header)


def test_good_base_and_overlay_pass() -> None:
    assert check(image(good())) is None
    assert check(image(good(PARENT))) == PARENT


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"crypt_method": 1}, "encrypted"),
        ({"crypt_method": 2}, "encrypted"),
        ({"extensions": ((qcow2.EXT_CRYPTO, b"x" * 16),)}, "encrypted"),
        ({"incompatible": qcow2.INCOMPAT_DATA_FILE}, "external data file"),
        ({"extensions": ((qcow2.EXT_DATA_FILE, b"/etc/passwd"),)}, "external data file"),
        ({"incompatible": 1 << 5}, "incompatible feature bits 0x20"),
        ({"incompatible": qcow2.INCOMPAT_DIRTY}, "incompatible feature bits 0x1"),
        ({"incompatible": qcow2.INCOMPAT_CORRUPT}, "incompatible feature bits 0x2"),
        ({"version": 2, "header_length": 72}, "version 2 is refused"),
        ({"refcount_order": 7}, "refcount order"),
        ({"header_length": 112, "compression_type": 9}, "compression type"),
    ],
)
def test_policy_refusals(changes: dict[str, object], message: str) -> None:
    with pytest.raises(UnsafeImage, match=message):
        check(image(good(**changes)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extensions", "message"),
    [
        ((), "backing format is not recorded"),
        (((qcow2.EXT_BACKING_FORMAT, b"vmdk"),), "backing format is not qcow2"),
        (((qcow2.EXT_BACKING_FORMAT, b"raw"),), "backing format is not qcow2"),
    ],
)
def test_backing_format_must_be_recorded_qcow2(extensions: tuple, message: str) -> None:
    with pytest.raises(UnsafeImage, match=message):
        check(image(good(PARENT, extensions=extensions)))


@pytest.mark.parametrize(
    "name",
    [b"/etc/passwd", b"../../../../other.git/lfs/objects/ab/cd/" + PARENT.encode(),
     b"../../ab/ce/" + PARENT.encode(), b"json:{}", b"nbd://127.0.0.1/x", b"../../ab/cd/x"],
)  # fmt: skip
def test_backing_name_must_be_a_store_reference(name: bytes) -> None:
    header = good(PARENT, backing_name=name, backing_size=len(name))
    with pytest.raises(UnsafeImage, match="not a content-addressed reference"):
        check(image(header))


@pytest.mark.parametrize("size", [0, 3, 4, 71, 72, 103, 104, 511])
def test_truncated_headers_refused(size: int) -> None:
    with pytest.raises(UnsafeImage, match="not a qcow2|truncated"):
        check(image(good())[:size])


def test_tables_past_the_end_are_truncation() -> None:
    data = image(good(l1_size=64, l1_table_offset=1024))
    with pytest.raises(UnsafeImage, match="L1 table lies past the end"):
        check(data)
    with pytest.raises(UnsafeImage, match="refcount table lies past the end"):
        check(qcow2.build(good()))  # the refcount table's cluster is missing


def test_real_qemu_images(tmp_path: Path) -> None:
    """Images qemu-img writes pass; cut to 72 B or 512 B they are refused."""
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    assert qcow2.checked_parent(base) is None
    overlay = tmp_path / "overlay.qcow2"
    reference = backing_reference(PARENT)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", reference, "-F", "qcow2",
         str(overlay), "1M"],
        check=True,
    )  # fmt: skip
    assert qcow2.checked_parent(overlay) == PARENT
    for size in (72, 512):
        cut = tmp_path / f"cut{size}"
        cut.write_bytes(base.read_bytes()[:size])
        with pytest.raises(UnsafeImage, match="truncated"):
            qcow2.checked_parent(cut)


def test_fetched_chain_links_must_follow(tmp_path: Path) -> None:
    base, top = tmp_path / "base", tmp_path / "top"
    base.write_bytes(image(good()))
    top.write_bytes(image(good(PARENT)))
    check_fetched_chain([(PARENT, base), ("f" * 64, top)])
    with pytest.raises(IntegrityError, match="the chain says none"):
        check_fetched_chain([("f" * 64, top)])
    with pytest.raises(IntegrityError, match="backing file is none"):
        check_fetched_chain([(PARENT, base), ("f" * 64, base)])
    with pytest.raises(IntegrityError, match="empty"):
        check_fetched_chain([])


headers = st.builds(
    qcow2.Header,
    cluster_bits=st.integers(9, 12),
    size=st.integers(0, 1 << 62),
    l1_size=st.integers(0, 4),
    refcount_order=st.integers(0, 6),
    incompatible=st.sampled_from([0, qcow2.INCOMPAT_COMPRESSION, qcow2.INCOMPAT_EXTENDED_L2]),
    compatible=st.integers(0, (1 << 64) - 1),
    nb_snapshots=st.integers(0, 10),
    extensions=st.lists(
        st.tuples(st.sampled_from([qcow2.EXT_FEATURE_TABLE, qcow2.EXT_BITMAPS, 0x1234]),
                  st.binary(max_size=40)),
        max_size=3,
    ).map(tuple),
)  # fmt: skip


@given(headers, st.booleans())
def test_round_trip_of_headers_we_build(header: qcow2.Header, overlay: bool) -> None:
    if overlay:
        name = backing_reference(PARENT).encode()
        offset = header.cluster_size - len(name)
        extensions = (*header.extensions, (qcow2.EXT_BACKING_FORMAT, b"qcow2"))
        header = replace(header, backing_offset=offset, backing_size=len(name),
                         backing_name=name, extensions=extensions)  # fmt: skip
    used = qcow2.V3_HEADER + sum(8 + ((len(d) + 7) & ~7) for _, d in header.extensions) + 8
    if used > header.backing_offset and overlay:
        return  # the extensions would overwrite the name: not a header anyone writes
    parsed = qcow2.parse(qcow2.build(header))
    assert parsed == header
    assert qcow2.check_object(parsed) == (PARENT if overlay else None)


@given(st.data())
def test_random_mutations_only_raise_our_error(data: st.DataObject) -> None:
    raw = bytearray(image(good(PARENT)))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, 600))
        if position < len(raw):
            raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        parent = check(bytes(raw[:cut]))
    except UnsafeImage as exc:
        assert "QFI" not in str(exc) and "\x00" not in str(exc)
        return
    assert parent is None or qcow2.BACKING_REFERENCE.fullmatch(backing_reference(parent))


@given(st.binary(max_size=1200))
def test_arbitrary_bytes_only_raise_our_error(data: bytes) -> None:
    for candidate in (data, qcow2.MAGIC + data):
        try:
            check(candidate)
        except UnsafeImage:
            pass
