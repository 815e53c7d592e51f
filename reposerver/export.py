"""A repository version as a plain directory that stock tools open (`cui fetch`).

Published disks are chains of content-addressed qcow2 objects whose backing names are
store-relative (`../../ab/cd/<sha256>`), so a single downloaded object cannot be opened on its
own. An export lays the chain out exactly as the store does and adds, per disk, a small qcow2
file under the disk's own name whose backing file is the chain's top::

    DIR/objects/ab/cd/<sha256>     every chain object, verified by hash (the store's layout)
    DIR/root.qcow2                 qcow2, backing file objects/ab/cd/<top>, format qcow2
    DIR/DNS.cvl, DIR/dns.xml …     the version's other files; a domain XML has its relative
                                   disk paths made absolute (DIR/…), so `virsh define` takes it

`qemu-img info --backing-chain DIR/root.qcow2` and `virsh define DIR/dns.xml` work as they are.
The directory is built beside DIR and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reposerver.errors import BadRequest, ToolFailed
from reposerver.names import file_path
from reposerver.objects import object_relpath


@dataclass(frozen=True)
class Export:
    """What `export_version` wrote."""

    version: int
    directory: Path
    disks: list[str]
    files: list[str]


def export_version(reader: Any, version: int | None, into: Path, progress: Any = None) -> Export:
    """Write `version` (default: latest) of the repository `reader` reads into `into`.

    Raises:
        BadRequest: `into` exists and is not an empty directory, or the server named a file
            outside the version.
    """
    into = into.absolute()
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise BadRequest(f"{into}: exists and is not an empty directory")
    number = version if version is not None else reader.latest()
    info = next((v for v in reader.versions() if int(v["number"]) == number), None)
    if info is None:
        raise BadRequest(f"no version {number}")
    disk_names = {d["name"] for d in reader.disks(number)}
    into.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{into.name}.", dir=into.parent))
    try:
        for name in sorted(disk_names):
            top = reader.fetch_disk(number, name, work, progress)
            _disk_file(work, file_path(name), top)
        written = []
        for name in sorted(info["files"]):
            if name in disk_names or name.startswith(".") or "/." in name:
                continue
            data = reader.read_file(number, file_path(name))
            if name.endswith(".xml"):
                data = absolute_disk_paths(data, into / Path(name).parent)
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append(name)
        if into.exists():
            into.rmdir()
        work.rename(into)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Export(number, into, sorted(disk_names), written)


def _disk_file(work: Path, name: str, top: Path) -> None:
    """`work/name`: an empty qcow2 whose backing file is the chain's top (relative name)."""
    target = work / name
    target.parent.mkdir(parents=True, exist_ok=True)
    relative = str(Path(*[".."] * name.count("/"), "objects", object_relpath(top.name)))
    done = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", relative, str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise ToolFailed(f"could not create {name} over {relative}: qemu-img failed")


def absolute_disk_paths(xml: bytes, directory: Path) -> bytes:
    """A domain XML with every relative `<disk><source file>` made absolute under `directory`.

    Anything that is not a domain XML is returned unchanged.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return xml
    if root.tag != "domain":
        return xml
    for source in root.findall("./devices/disk/source"):
        name = source.get("file")
        if name and not name.startswith("/"):
            source.set("file", str(directory / file_path(name)))
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=False))
