"""Issue 10 item 1: disk chains are qcow2 all the way down, checked by our parser, never probed.

Each attack builds its hostile image itself (with qemu-img where qemu can write it, else by
patching a real qemu image), commits it as the program disk with stock git + git-lfs, pushes
over HTTP to real gunicorn, and asserts the refusal, an unchanged store and refs, and a clean
`git fsck --strict`. The runner side serves hostile chains from a tampering HTTP server and
asserts the utility refuses them before any qemu process runs.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reposerver import qcow2
from reposerver.client import open_repository
from reposerver.errors import IntegrityError
from reposerver.objects import backing_reference
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import sample_appliance

from .conftest import HostilePushSite, hostile_push_git

pytestmark = pytest.mark.slow
VMDK = b"""# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="monolithicFlat"

RW 2048 FLAT "/etc/passwd" 0
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


QEMU_IMG = shutil.which("qemu-img") or "qemu-img"  # resolved before the spy shadows it


def qemu_img(*args: str) -> None:
    subprocess.run([QEMU_IMG, *args], check=True, capture_output=True)


def overlay(path: Path, backing: str, backing_format: str = "qcow2", *options: str) -> bytes:
    """A real qemu-made qcow2 overlay with backing name `backing` (not opened: -u)."""
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", backing_format,
             *options, str(path), "16M")  # fmt: skip
    return path.read_bytes()


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def without_backing_format(data: bytes) -> bytes:
    """The image with its backing-format extension renamed to an unknown one."""
    marker = struct.pack(">I", qcow2.EXT_BACKING_FORMAT)
    at = data.index(marker, qcow2.V3_HEADER)
    return data[:at] + struct.pack(">I", 0x12345678) + data[at + 4 :]


def v1_disk(site: HostilePushSite) -> str:
    return str(site.repo.disks(1)[0]["sha256"])


def attack(site: HostilePushSite, top: bytes, extra: bytes | None = None) -> Path:
    """A clone whose next version v2 has `top` as its program disk (and `extra` as a second
    LFS object, so git-lfs uploads it too); committed and tagged, not pushed."""
    work = site.clone()
    (work / "root.qcow2").write_bytes(top)
    if extra is not None:
        (work / "extra.bin").write_bytes(extra)
        with open(work / ".gitattributes", "a") as f:
            f.write("/extra.bin filter=lfs diff=lfs merge=lfs -text\n")
    hostile_push_git("add", "-A", cwd=work)
    hostile_push_git("commit", "-q", "-m", "hostile disk", cwd=work)
    hostile_push_git("tag", "-a", "v2", "-m", "v2", cwd=work)
    return work


Top = Callable[[], bytes]


def hostile_tops(tmp: Path, site: HostilePushSite) -> dict[str, tuple[Top, bytes | None, str]]:
    """Attack name -> (builder of the top image, extra LFS object, expected refusal)."""
    good_ref = backing_reference(v1_disk(site))
    raw_object = b"\x00" * 65536
    other = str(site.other.disks(1)[0]["sha256"])
    other_ref = f"{other[:2]}/{other[2:4]}/{other}"

    def good() -> bytes:
        return overlay(tmp / "good.qcow2", good_ref)

    return {
        "vmdk-descriptor-as-backing": (
            lambda: overlay(tmp / "a.qcow2", backing_reference(sha(VMDK)), "vmdk"), VMDK,
            "backing format is not qcow2",
        ),
        "vmdk-descriptor-named-qcow2": (
            lambda: overlay(tmp / "b.qcow2", backing_reference(sha(VMDK))), VMDK,
            f"object sha256:{sha(VMDK)}: not a qcow2 image",
        ),
        "raw-object-as-backing": (
            lambda: overlay(tmp / "c.qcow2", backing_reference(sha(raw_object))), raw_object,
            "not a qcow2 image",
        ),
        "raw-disk-object": (lambda: raw_object, None, "not a qcow2 image"),
        "backing-format-raw": (lambda: overlay(tmp / "d.qcow2", good_ref, "raw"), None,
                               "backing format is not qcow2"),
        "backing-format-absent": (lambda: without_backing_format(good()), None,
                                  "backing format is not recorded"),
        "external-data-file": (lambda: _data_file(tmp), None, "external data file"),
        "external-data-file-bit": (lambda: patched(good(), 72, ">Q", qcow2.INCOMPAT_DATA_FILE),
                                   None, "external data file"),
        "encryption-luks": (lambda: _luks(tmp), None, "encrypted"),
        "encryption-aes-field": (lambda: patched(good(), 32, ">I", 1), None, "encrypted"),
        "unknown-incompatible-bit": (lambda: patched(good(), 72, ">Q", 1 << 40), None,
                                     "incompatible feature bits 0x10000000000"),
        "truncated-72": (lambda: good()[:72], None, "truncated"),
        "truncated-512": (lambda: good()[:512], None, "truncated"),
        "qcow2-v2": (lambda: _v2(tmp), None, "version 2 is refused"),
        "backing-in-other-repository": (
            lambda: overlay(tmp / "e.qcow2", "../../../../../Other/lfs/objects/" + other_ref),
            None, "not a content-addressed reference",
        ),
        "backing-object-of-other-repository": (
            lambda: overlay(tmp / "f.qcow2", backing_reference(other)), None,
            f"object sha256:{other} is not in the store",
        ),
        "backing-host-path": (lambda: overlay(tmp / "g.qcow2", "/etc/passwd"), None,
                              "not a content-addressed reference"),
        "backing-outside-store": (
            lambda: overlay(tmp / "h.qcow2", "../../../../../../etc/passwd"), None,
            "not a content-addressed reference",
        ),
    }  # fmt: skip


def _data_file(tmp: Path) -> bytes:
    """A real qemu image whose data lives in an external file (here a scratch file)."""
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp / 'data.raw'}",
             str(tmp / "datafile.qcow2"), "16M")  # fmt: skip
    return (tmp / "datafile.qcow2").read_bytes()


def _luks(tmp: Path) -> bytes:
    """A real LUKS-encrypted qcow2 (qemu's key-derivation benchmark can fail under load:
    it is retried, the image is the same kind either way)."""
    secret = tmp / "secret"
    secret.write_text("luks")
    args = ["create", "-q", "-f", "qcow2", "--object", f"secret,id=s0,file={secret}", "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            str(tmp / "luks.qcow2"), "16M"]  # fmt: skip
    for attempt in range(5):
        done = subprocess.run([QEMU_IMG, *args], capture_output=True)
        if done.returncode == 0:
            break
        assert attempt < 4, done.stderr
    return (tmp / "luks.qcow2").read_bytes()


def _v2(tmp: Path) -> bytes:
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", str(tmp / "v2.qcow2"), "16M")
    return (tmp / "v2.qcow2").read_bytes()


ATTACKS = [
    "vmdk-descriptor-as-backing", "vmdk-descriptor-named-qcow2", "raw-object-as-backing",
    "raw-disk-object", "backing-format-raw", "backing-format-absent", "external-data-file",
    "external-data-file-bit", "encryption-luks", "encryption-aes-field",
    "unknown-incompatible-bit", "truncated-72", "truncated-512", "qcow2-v2",
    "backing-in-other-repository", "backing-object-of-other-repository", "backing-host-path",
    "backing-outside-store",
]  # fmt: skip


@pytest.mark.parametrize("case", ATTACKS)
def test_hostile_disk_push_refused(hostile_push_site: HostilePushSite, tmp_path: Path,
                                   case: str) -> None:  # fmt: skip
    build, extra, message = hostile_tops(tmp_path, hostile_push_site)[case]
    top = build()
    work = attack(hostile_push_site, top, extra)
    stderr = hostile_push_site.push_refused(work, "main", "v2", message=message)
    assert "/etc/passwd" not in stderr.replace(message, ""), "fetched content echoed"
    staged = hostile_push_site.repo.path / "lfs" / "incoming"
    assert sha(top) not in {
        p.name for p in (hostile_push_site.repo.path / "lfs" / "objects").rglob("*")
    }
    assert staged.exists()  # uploads waited in staging and stayed there (pruned later)


def test_good_overlay_push_accepted_control(hostile_push_site: HostilePushSite,
                                            tmp_path: Path) -> None:  # fmt: skip
    """The same path accepts a policy-conforming overlay, so the refusals above are the checks."""
    top = overlay(tmp_path / "ok.qcow2", backing_reference(v1_disk(hostile_push_site)))
    work = attack(hostile_push_site, top)
    hostile_push_git("push", "origin", "main", "v2", cwd=work)
    assert hostile_push_site.repo.latest() == 2
    hostile_push_site.assert_fsck_clean()


def test_publish_converts_a_raw_disk_to_qcow2(tmp_path: Path) -> None:
    """`cui publish` of a raw image stores a qcow2 v3 object (every object of every chain is
    qcow2), with the same guest-visible data."""
    app = tmp_path / "app"
    sample_appliance(app)
    raw = tmp_path / "root.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", str(app / "root.qcow2"), str(raw))
    os.replace(raw, app / "root.qcow2")
    assert (app / "root.qcow2").read_bytes()[:4] != qcow2.MAGIC
    repo = Repository.create(tmp_path / "DNS")
    result = publish(repo.path, app / "DNS.cvl")
    stored = repo.store.verified_path(result.disks[0].sha256)
    assert qcow2.checked_parent(stored) is None and qcow2.read(stored).version == 3
    same = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2",
                           str(app / "root.qcow2"), str(stored)], capture_output=True)  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert repo.disks(1)[0]["format"] == "qcow2"


# -- the runner distrusts the server ----------------------------------------------------------


class TamperingServer:
    """A loopback HTTP server answering the reposerver routes a runner fetches a disk with,
    from a directory we fill by hand: it lists whatever chain we like."""

    def __init__(self, root: Path) -> None:
        handler = _quiet_handler(root)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/DNS"
        self.root = root
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, name: str, chain: list[bytes]) -> None:
        objects = self.root / "DNS" / "objects" / "sha256"
        objects.mkdir(parents=True, exist_ok=True)
        for data in chain:
            (objects / sha(data)).write_bytes(data)
        listing = [{"name": name, "sha256": sha(chain[-1]), "size": len(chain[-1]),
                    "format": "qcow2",
                    "chain": [{"sha256": sha(d), "size": len(d)} for d in chain]}]  # fmt: skip
        version = self.root / "DNS" / "versions" / "1"
        version.mkdir(parents=True, exist_ok=True)
        (version / "disks.json").write_text(json.dumps(listing))


def _quiet_handler(root: Path) -> Callable[..., http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def hostile_push_tampering_server(tmp_path: Path) -> Iterator[TamperingServer]:
    server = TamperingServer(tmp_path / "served")
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture
def hostile_push_qemu_spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """qemu-img, qemu-io and qemu-system-x86_64 on PATH that only record that they ran."""
    spy = tmp_path / "spy"
    spy.mkdir()
    record = tmp_path / "qemu-ran"
    for tool in ("qemu-img", "qemu-io", "qemu-system-x86_64", "qemu-nbd"):
        script = spy / tool
        script.write_text(f'#!/bin/sh\necho {tool} "$@" >> {record}\nexit 1\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{spy}{os.pathsep}{os.environ['PATH']}")
    return record


def _runner_chains(tmp: Path) -> dict[str, tuple[list[bytes], str]]:
    base = tmp / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    good_base = base.read_bytes()
    good_top = overlay(tmp / "top.qcow2", backing_reference(sha(good_base)))
    return {
        "vmdk-descriptor-as-backing": (
            [VMDK, overlay(tmp / "v.qcow2", backing_reference(sha(VMDK)), "vmdk")],
            "not a qcow2 image",
        ),
        "vmdk-top-only": ([overlay(tmp / "w.qcow2", backing_reference(sha(VMDK)), "vmdk")],
                          "backing format is not qcow2"),
        "raw-base": ([b"\0" * 4096, overlay(tmp / "r.qcow2", backing_reference(sha(b"\0" * 4096)))],
                     "not a qcow2 image"),
        "host-path-backing": ([overlay(tmp / "h.qcow2", "/etc/passwd")],
                              "not a content-addressed reference"),
        "external-data-file-bit": ([patched(good_base, 72, ">Q", qcow2.INCOMPAT_DATA_FILE)],
                                   "external data file"),
        "truncated-512": ([good_base[:512]], "truncated"),
        "chain-does-not-link": ([good_base, overlay(tmp / "x.qcow2", backing_reference("a" * 64))],
                                "the chain says"),
        "top-without-its-base": ([good_top], "the chain says none"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["vmdk-descriptor-as-backing", "vmdk-top-only", "raw-base", "host-path-backing",
     "external-data-file-bit", "truncated-512", "chain-does-not-link", "top-without-its-base"],
)  # fmt: skip
def test_runner_refuses_hostile_chain_before_qemu(
    hostile_push_tampering_server: TamperingServer, hostile_push_qemu_spy: Path,
    tmp_path: Path, case: str,
) -> None:  # fmt: skip
    from utility.adapters.appliance_files import RepositoryFiles
    from utility.core.model_view import Origin
    from utility.errors import ApplianceError

    chain, message = _runner_chains(tmp_path)[case]
    hostile_push_tampering_server.serve("root.qcow2", chain)
    url = hostile_push_tampering_server.url
    with pytest.raises(IntegrityError, match=message):
        open_repository(url).fetch_disk(1, "root.qcow2", tmp_path / "cache-client")
    files = RepositoryFiles(Origin("DNS", url, "DNS.cvl", "1"))
    with pytest.raises(ApplianceError, match=message):
        files.local_path("root.qcow2", tmp_path / "cache-utility")
    assert not hostile_push_qemu_spy.exists(), hostile_push_qemu_spy.read_text()


def test_runner_accepts_a_good_chain_control(
    hostile_push_tampering_server: TamperingServer, hostile_push_qemu_spy: Path, tmp_path: Path
) -> None:
    """The same tampering server serving an honest chain is accepted: the refusals above are
    the checks, not the fake server."""
    from utility.adapters.appliance_files import RepositoryFiles
    from utility.core.model_view import Origin

    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    chain = [
        base.read_bytes(),
        overlay(tmp_path / "t.qcow2", backing_reference(sha(base.read_bytes()))),
    ]
    hostile_push_tampering_server.serve("root.qcow2", chain)
    files = RepositoryFiles(Origin("DNS", hostile_push_tampering_server.url, "DNS.cvl", "1"))
    top = files.local_path("root.qcow2", tmp_path / "cache")
    assert top.read_bytes() == chain[-1]
    assert not hostile_push_qemu_spy.exists()


def test_publish_refuses_a_local_overlay_whose_backing_format_qemu_would_guess(
    tmp_path: Path,
) -> None:
    """`cui publish` never lets qemu probe: a publisher's overlay without a recorded backing
    format is refused before any qemu-img call, and nothing is stored."""
    app = tmp_path / "app"
    sample_appliance(app)
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw",
             str(app / "root.qcow2"), "16M")  # fmt: skip
    (app / "root.qcow2").write_bytes(without_backing_format((app / "root.qcow2").read_bytes()))
    repo = Repository.create(tmp_path / "DNS")
    with pytest.raises(IntegrityError, match="backing file's format is not recorded"):
        publish(repo.path, app / "DNS.cvl")
    assert repo.latest() == 0
    assert not [p for p in (repo.path / "lfs" / "objects").rglob("*") if p.is_file()]
