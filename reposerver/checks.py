"""The rules every write to a repository obeys, whoever writes (git push, HTTP, cui publish).

Every git object of a push first passes the checks of `git fsck --strict` (`reposerver.fsck`
over `reposerver.pushed_objects`). Only `refs/heads/*` and `refs/tags/vN` may change. A version
tag is created once, as an annotated tag named `vN` for N = latest + 1, on a commit whose tree
checks: exactly one top-level CVL file that evaluates, the domain XML each local VM appliance
names, and for every program disk a Git LFS pointer whose object is in the store (or staged by
an LFS upload, see `objects.StagedView`) with the right size and hash and a backing chain of
qcow2 objects meeting `reposerver.qcow2`'s policy.
Existing versions can never be moved or deleted. Under a require-signed policy the tag's
signature must verify against the repository's trusted keys.

Callers hold `Repository.lock()` around `check_updates` and the ref update that follows, and
promote each accepted version's `lfs_objects` out of staging (`promote_accepted`) before it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dulwich.objects import Commit, Tag
from dulwich.refs import Ref, check_ref_format

from reposerver import domain_xml, fsck, lfs_pointer, pushed_objects, signatures
from reposerver.disks import chain
from reposerver.errors import (
    BadRequest,
    ImmutableVersion,
    IntegrityError,
    InvalidAppliance,
    NotFound,
    PushRefused,
    SignatureRefused,
)
from reposerver.names import file_path, version_of_ref
from reposerver.objects import StagedView
from reposerver.repository import Repository, tree_files
from reposerver.validate import ApplianceSpec, describe_appliance

ZERO = b"0" * 40


@dataclass(frozen=True)
class RefUpdate:
    """One requested change: `ref` from `old` to `new` (hex ids, zeros for none)."""

    ref: bytes
    old: bytes
    new: bytes


@dataclass(frozen=True)
class AcceptedVersion:
    """A version that passed every check, ready to be announced once its ref is written."""

    number: int
    tag_id: str
    commit: str
    signer: str | None
    lfs_objects: tuple[str, ...] = ()
    """Every object of every program disk's chain (base first), stored or still staged."""


def promote_accepted(repository: Repository, accepted: Sequence[AcceptedVersion]) -> list[str]:
    """Move the staged LFS objects the accepted versions reference into the store.

    Call under the repository lock, after `check_updates` and before the refs are written, so
    a version is never visible without its objects. Returns the ids moved.

    Raises:
        IntegrityError: a staged object no longer matches its id.
    """
    oids = [oid for version in accepted for oid in version.lfs_objects]
    return repository.store.promote(repository.store.staging(), oids)


def check_updates(
    repository: Repository,
    updates: Sequence[RefUpdate],
    objects: Any = None,
    resolver: Any = None,
) -> list[AcceptedVersion]:
    """Check a whole push; return the versions it creates.

    Args:
        repository: the target repository (its refs are the current state).
        updates: every ref change of the push; all must pass (pushes are all-or-nothing).
        objects: where the pushed objects can be read (defaults to the repository's store;
            git's pre-receive hook passes its quarantine overlay).
        resolver: the CVL resolver for imports of the pushed CVL file.

    Raises:
        PushRefused: the first rule broken, with a message naming the ref.
    """
    objects = objects if objects is not None else repository.git.object_store
    check_git_objects(repository, objects, updates)
    existing = repository.version_tags()
    expected = max(existing, default=0) + 1
    accepted = []
    version_updates = []
    for update in updates:
        number = version_of_ref(update.ref)
        if number is not None:
            version_updates.append((number, update))
        elif update.ref.startswith(b"refs/heads/") and check_ref_format(Ref(update.ref)):
            if update.new != ZERO and not isinstance(_get(objects, update.new), Commit):
                raise PushRefused(f"{update.ref.decode()}: branches must point at commits")
        else:
            raise PushRefused(
                f"{update.ref.decode(errors='replace')}: only refs/heads/* and version tags "
                "refs/tags/vN (N = 1, 2, ...) may be written"
            )
    for number, update in sorted(version_updates, key=lambda item: item[0]):
        tag = f"v{number}"
        if update.old != ZERO or number in existing:
            action = "deleted" if update.new == ZERO else "moved or pushed again"
            raise ImmutableVersion(
                f"{tag} already exists and cannot be {action}: versions are immutable"
            )
        if update.new == ZERO:
            raise ImmutableVersion(f"{tag}: versions are immutable and cannot be deleted")
        if number != expected:
            raise PushRefused(
                f"{tag}: the next version of this repository is v{expected} "
                "(versions are consecutive; none may be skipped)"
            )
        accepted.append(_check_version(repository, objects, number, update.new, resolver))
        expected += 1
    return accepted


def check_git_objects(repository: Repository, objects: Any, updates: Sequence[RefUpdate]) -> int:
    """Every object the push brings passes `git fsck --strict`'s checks (`reposerver.fsck`).

    Returns how many objects were checked.

    Raises:
        BadGitObject: the first object that does not.
    """
    main = repository.git.object_store
    existing = [sha for sha in repository.git.refs.as_dict().values() if sha]
    tips = [u.new for u in updates if u.new != ZERO]
    return fsck.check_objects(
        pushed_objects.pushed(objects, main, existing, tips),
        lambda sha: pushed_objects.raw(objects, sha),
    )


def _get(objects: Any, sha: bytes) -> Any:
    try:
        return objects[sha]
    except KeyError:
        return None


def _check_version(
    repository: Repository, objects: Any, number: int, tag_id: bytes, resolver: Any
) -> AcceptedVersion:
    name = f"v{number}"
    tag = _get(objects, tag_id)
    if not isinstance(tag, Tag):
        raise PushRefused(
            f"{name}: a lightweight tag is not a version; make an annotated tag (git tag -a or -s)"
        )
    if tag.name != name.encode():
        raise PushRefused(f"{name}: the tag object is named {tag.name.decode(errors='replace')!r}")
    commit = _get(objects, tag.object[1])
    if not isinstance(commit, Commit):
        raise PushRefused(f"{name}: a version tag must point at a commit")
    specs: list[ApplianceSpec] = []
    lfs_objects = check_tree(repository, objects, commit.tree, name, resolver, specs)
    status = _bound_signature(repository, tag, name, specs[0].appliance if specs else None)
    if repository.config.require_signed and status.signer is None:
        raise SignatureRefused(
            f"{name}: this repository requires signed versions: {status.problem}"
        )
    return AcceptedVersion(
        number, tag.id.decode(), commit.id.decode(), status.signer, tuple(lfs_objects)
    )


def _bound_signature(
    repository: Repository, tag: Tag, name: str, appliance: str | None
) -> signatures.SignatureStatus:
    """The tag's signature status, counting a signature only when it is bound to this
    repository and appliance; a valid signature bound to another one is refused outright."""
    raw = tag.as_raw_string()
    status = signatures.verify(repository.path, raw)
    if status.signer is None:
        return status
    problem = signatures.binding_problem(raw, repository.name, appliance)
    if problem is None:
        return status
    bound = signatures.binding(signatures.split_signature(raw)[0])
    if bound.repository is not None or bound.appliance is not None:
        raise SignatureRefused(f"{name}: {problem}")
    return signatures.SignatureStatus(True, None, problem)


def check_tree(
    repository: Repository,
    objects: Any,
    tree_id: bytes,
    name: str,
    resolver: Any = None,
    specs: list[ApplianceSpec] | None = None,
) -> list[str]:
    """Check that a version's tree is a complete appliance (see the module docstring).

    Returns the LFS object ids of every program disk's chain (stored or staged); appends
    what the CVL file declares to `specs` when given. Errors never quote imported content.
    """
    lfs_objects: list[str] = []
    files = tree_files(objects, tree_id)
    for path in files:
        try:
            file_path(path)
        except BadRequest as exc:
            raise InvalidAppliance(f"{name}: {exc}") from None
    cvl_files = [p for p in files if "/" not in p and p.endswith(".cvl")]
    if len(cvl_files) != 1:
        raise InvalidAppliance(
            f"{name}: a version holds exactly one top-level .cvl file, found {len(cvl_files)}"
        )
    cvl_name = cvl_files[0]
    text = objects[files[cvl_name]].as_raw_string().decode("utf-8", errors="replace")
    spec = describe_appliance(text, cvl_name, resolver=resolver, quote_imports=False)
    if specs is not None:
        specs.append(spec)
    for vm in spec.vm_files:
        vm_path = _inside(vm, "", f"{name}:{cvl_name}: vm")
        if vm_path not in files:
            raise InvalidAppliance(
                f"{name}: {cvl_name} names vm {vm!r}, which is not in the version"
            )
        xml = objects[files[vm_path]].as_raw_string()
        for disk in domain_xml.disks(xml, f"{name}:{vm_path}"):
            where = f"{name}:{vm_path}: disk {disk.target}"
            disk_path = _inside(disk.source, posixpath.dirname(vm_path), where)
            if disk.target in spec.data_devices:
                if disk_path in files:
                    raise InvalidAppliance(
                        f"{where}: {disk.source!r} is a data disk; data disks are never stored "
                        "in a repository (remove it from the commit)"
                    )
                continue
            if disk_path not in files:
                raise InvalidAppliance(
                    f"{where}: program disk {disk.source!r} is not in the version"
                )
            lfs_objects += _check_disk(
                repository, objects[files[disk_path]].as_raw_string(), f"{where} ({disk_path})"
            )
    return lfs_objects


def _inside(path: str, base: str, where: str) -> str:
    if path.startswith("/"):
        raise InvalidAppliance(f"{where}: {path!r} must be a path relative to the version")
    joined = posixpath.normpath(posixpath.join(base, path))
    try:
        return file_path(joined)
    except BadRequest:
        raise InvalidAppliance(f"{where}: {path!r} points outside the version") from None


def _check_disk(repository: Repository, data: bytes, where: str) -> list[str]:
    if not lfs_pointer.looks_like_pointer(data):
        raise InvalidAppliance(
            f"{where}: a program disk must be a Git LFS pointer (git lfs track it)"
        )
    pointer = lfs_pointer.parse(data, where)
    store = StagedView(repository.store)
    if not store.has(pointer.oid, pointer.size):
        raise InvalidAppliance(
            f"{where}: LFS object sha256:{pointer.oid} ({pointer.size} bytes) "
            "is not on the server; "
            "push it with git lfs push or cui publish"
        )
    try:
        return chain(store, pointer.oid)  # type: ignore[arg-type]
    except (NotFound, IntegrityError) as exc:
        raise InvalidAppliance(f"{where}: {exc}") from None
