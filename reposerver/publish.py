"""`cui publish`: store a CVL file, its domain XML and its program disks as the next version.

Order of writes, so a failure leaves nothing visible: disk objects first (each verified as it
is stored), then the git blobs, tree, commit and tag objects (unreachable until referenced),
then, under the repository lock and after the same checks a push gets, the tag ref `vN` (the
moment the version exists) and finally `refs/heads/main`. A failed publish can leave
unreferenced objects behind, never a partial version.
"""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dulwich.config import StackedConfig
from dulwich.index import commit_tree
from dulwich.objects import Blob, Commit, Tag
from dulwich.refs import Ref

from reposerver import disks, domain_xml, lfs_pointer, signatures
from reposerver.checks import ZERO, RefUpdate, check_updates
from reposerver.errors import BadRequest, ImmutableVersion, InvalidAppliance, NotFound
from reposerver.names import file_path, version_ref
from reposerver.receive import announce_refs
from reposerver.repository import Repository
from reposerver.tag_signing import sign_payload
from reposerver.validate import describe_appliance

MAIN = b"refs/heads/main"


@dataclass(frozen=True)
class StoredDisk:
    """One program disk of a published version."""

    name: str
    sha256: str
    parent: str | None
    stored_bytes: int
    image_bytes: int


@dataclass(frozen=True)
class PublishResult:
    """What `publish` wrote."""

    version: int
    commit: str
    tag_id: str
    signed: bool
    disks: list[StoredDisk] = field(default_factory=list)

    @property
    def stored_bytes(self) -> int:
        """New disk bytes this version added to the store."""
        return sum(d.stored_bytes for d in self.disks)

    @property
    def image_bytes(self) -> int:
        """What copying the full disk images would have taken."""
        return sum(d.image_bytes for d in self.disks)


def _identity(role: str, config: StackedConfig | None = None) -> bytes:
    """`Name <email>` the way git picks it: `GIT_<ROLE>_NAME/EMAIL`, else `user.name/email`
    from git's configuration (the repository's own, then global, then system)."""
    config = config if config is not None else StackedConfig.default()
    found = []
    for key in ("name", "email"):
        value = os.environ.get(f"GIT_{role}_{key.upper()}")
        if not value:
            try:
                value = config.get((b"user",), key.encode()).decode()
            except KeyError:
                value = ""
        found.append(value.strip())
    name, email = found
    if not name or not email:
        raise BadRequest(
            "who is publishing? set `git config --global user.name NAME` and "
            "`git config --global user.email EMAIL` (or GIT_COMMITTER_NAME/GIT_COMMITTER_EMAIL), "
            "as git itself requires"
        )
    if any(c in name + email for c in "<>\n"):
        raise BadRequest("user.name and user.email must not contain '<', '>' or a line break")
    return f"{name} <{email}>".encode()


def repository_config(git: Any) -> StackedConfig:
    """git's configuration as seen from this repository: its own first, then global, system."""
    return StackedConfig([git.get_config(), *StackedConfig.default_backends()])


def _version_path(path: str, base: str, where: str) -> str:
    if path.startswith("/"):
        raise InvalidAppliance(f"{where}: {path!r} must be relative to the file that names it")
    try:
        return file_path(posixpath.normpath(posixpath.join(base, path)))
    except BadRequest:
        raise InvalidAppliance(
            f"{where}: {path!r} points outside the appliance directory"
        ) from None


def collect(cvl_file: Path, resolver: Any = None) -> tuple[dict[str, bytes], dict[str, Path], str]:
    """The plain files, the disk images (version path -> local path) and the appliance name."""
    cvl_file = Path(cvl_file)
    text = cvl_file.read_text()
    spec = describe_appliance(text, cvl_file.name, resolver=resolver, base_dir=cvl_file.parent)
    files: dict[str, bytes] = {file_path(cvl_file.name): text.encode()}
    images: dict[str, Path] = {}
    for vm in spec.vm_files:
        vm_path = _version_path(vm, "", f"{cvl_file}: vm")
        local_xml = cvl_file.parent / vm_path
        if not local_xml.is_file():
            raise InvalidAppliance(f"{cvl_file}: vm {vm!r}: no such file {local_xml}")
        xml = local_xml.read_bytes()
        files[vm_path] = xml
        for disk in domain_xml.program_disks(xml, spec.data_devices, str(local_xml)):
            where = f"{local_xml}: disk {disk.target}"
            disk_path = _version_path(disk.source, posixpath.dirname(vm_path), where)
            local_disk = cvl_file.parent / disk_path
            if not local_disk.is_file():
                raise InvalidAppliance(f"{where}: no such image {local_disk}")
            images[disk_path] = local_disk
    return files, images, spec.appliance


def binding_trailers(repository: str, appliance: str) -> bytes:
    """The trailers that bind a signed tag to its repository and appliance (README)."""
    return (
        f"\n{signatures.REPOSITORY_TRAILER}: {repository}\n"
        f"{signatures.APPLIANCE_TRAILER}: {appliance}\n"
    ).encode()


def publish(
    repo_path: Path,
    cvl_file: Path,
    sign: str | None = None,
    resolver: Any = None,
    message: str | None = None,
) -> PublishResult:
    """Publish the appliance described by `cvl_file` as the next version of the repository."""
    repository = Repository(Path(repo_path))
    files, images, appliance = collect(Path(cvl_file), resolver)
    previous = repository.latest()
    stored: list[StoredDisk] = []
    for name, image in sorted(images.items()):
        parent = _previous_disk(repository, previous, name)
        oid = (
            disks.store_delta(repository.store, image, parent)
            if parent
            else disks.store_base(repository.store, image)
        )
        size = repository.store.size(oid)
        stored.append(
            StoredDisk(name, oid, parent, 0 if oid == parent else size, image.stat().st_size)
        )
        files[name] = lfs_pointer.Pointer(oid, size).encode()
    if images:
        # So that `git clone` with git-lfs checks the disks out as images, not pointer text.
        files[".gitattributes"] = "".join(
            f"/{name} filter=lfs diff=lfs merge=lfs -text\n" for name in sorted(images)
        ).encode()
    git = repository.git
    entries = []
    for name, data in sorted(files.items()):
        blob = Blob.from_string(data)
        git.object_store.add_object(blob)
        entries.append((name.encode(), blob.id, 0o100644))
    tree_id = commit_tree(git.object_store, entries)
    now = int(time.time())
    number = previous + 1
    text = (message or f"Version {number}").rstrip("\n").encode() + b"\n"
    main = git.refs.as_dict(Ref(b"refs/heads")).get(Ref(b"main"))
    commit = Commit()
    commit.tree = tree_id
    commit.parents = [main] if main else []
    config = repository_config(git)
    commit.author = _identity("AUTHOR", config)
    commit.committer = _identity("COMMITTER", config)
    commit.author_time = commit.commit_time = now
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = text
    git.object_store.add_object(commit)
    tag = Tag()
    tag.object = (Commit, commit.id)
    tag.name = f"v{number}".encode()
    tag.tagger = commit.committer
    tag.tag_time = now
    tag.tag_timezone = 0
    tag.message = text + binding_trailers(repository.name, appliance) if sign else text
    if sign:
        # Signing may wait for a passphrase, so it happens before the lock is taken.
        tag.signature = sign_payload(tag.as_raw_string(), sign)
    git.object_store.add_object(tag)
    update = RefUpdate(version_ref(number), ZERO, tag.id)
    with repository.lock():
        if repository.latest() != previous:
            raise ImmutableVersion(f"v{number} was published meanwhile; publish again")
        check_updates(repository, [update], resolver=resolver)
        if not git.refs.add_if_new(Ref(version_ref(number)), tag.id):
            raise ImmutableVersion(f"v{number} already exists: versions are immutable")
        git.refs.set_if_equals(Ref(MAIN), main, commit.id)
    announce_refs(repository, [update], public_url=None)
    return PublishResult(number, commit.id.decode(), tag.id.decode(), bool(sign), stored)


def _previous_disk(repository: Repository, previous: int, name: str) -> str | None:
    if previous == 0:
        return None
    try:
        entry = repository.file(previous, name)
    except NotFound:
        return None
    return entry.pointer.oid if entry.pointer else None
