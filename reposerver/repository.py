"""One appliance repository: a bare git repository whose versions are annotated tags `vN`.

The tree of version N holds the appliance's CVL file, the libvirt domain XML its `vm`
parameter names, and one Git LFS pointer per program disk; the disk objects live in the
content-addressed store `lfs/objects/` of the same directory (see `objects`, `disks`).
Reads go through this class; writes go through `publish` and the receive path, both of which
take `lock()` around validation and the ref update.
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.objects import Blob, Commit, Tag, Tree
from dulwich.refs import Ref
from dulwich.repo import Repo

from reposerver import lfs_pointer, repo_config, signatures
from reposerver.disks import chain, read_header
from reposerver.errors import BadRequest, NotFound
from reposerver.names import file_path, repository_name, version_of_ref, version_ref
from reposerver.objects import ObjectStore

HOOKS = {"pre-receive": "hooks.pre_receive", "post-receive": "hooks.post_receive"}
LOCK_FILE = "collective.lock"

_signature_memo: dict[tuple[str, bytes, str], signatures.SignatureStatus] = {}


@dataclass(frozen=True)
class VersionInfo:
    """What the JSON index says about one version."""

    number: int
    tag: str
    tag_id: str
    commit: str
    signed: bool
    signer: str | None
    date: int
    files: list[str]

    def to_json(self) -> dict[str, object]:
        """The version as it appears in `GET /NAME/`."""
        return {
            "number": self.number,
            "tag": self.tag,
            "commit": self.commit,
            "signed": self.signed,
            "signer": self.signer,
            "date": self.date,
            "files": self.files,
        }


@dataclass(frozen=True)
class FileEntry:
    """A file of a version: plain bytes, or a disk stored as a content-addressed object."""

    name: str
    blob_id: str
    data: bytes
    pointer: lfs_pointer.Pointer | None


def hook_script(module: str) -> str:
    """The text of an installed git hook: exec this interpreter on a `hooks.` module."""
    return (
        "#!/bin/sh\n# Installed by cui create: the checks live in reposerver/.\n"
        f'exec {sys.executable} -m {module} "$@"\n'
    )


class Repository:
    """A repository directory (bare git repository plus object store and config)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        if not (self.path / repo_config.CONFIG_FILE).exists():
            raise NotFound(
                f"{self.path} is not an appliance repository (no {repo_config.CONFIG_FILE})"
            )
        try:
            self.git = Repo(str(self.path))
        except NotGitRepository:
            raise NotFound(f"{self.path} is not an appliance repository") from None
        self.store = ObjectStore(self.path / "lfs" / "objects")

    @classmethod
    def create(cls, path: Path, config: repo_config.RepoConfig | None = None) -> Repository:
        """Create an empty repository at `path` (which must not exist or be an empty directory)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise BadRequest(f"{path} already exists and is not an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        git = Repo.init_bare(str(path))
        git.refs.set_symbolic_ref(Ref(b"HEAD"), Ref(b"refs/heads/main"))
        cfg = git.get_config()
        cfg.set((b"receive",), b"fsckObjects", True)
        cfg.set((b"core",), b"logAllRefUpdates", False)
        cfg.write_to_path()
        git.close()
        for name, module in HOOKS.items():
            hook = path / "hooks" / name
            hook.parent.mkdir(exist_ok=True)
            hook.write_text(hook_script(module))
            hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        (path / "lfs" / "objects").mkdir(parents=True)
        repo_config.gpg_key_dir(path).mkdir(parents=True)
        repo_config.allowed_signers_file(path).touch()
        (path / "logs").mkdir(exist_ok=True)
        repo_config.save(path, config or repo_config.RepoConfig())
        return cls(path)

    @property
    def name(self) -> str:
        """The repository's name (its directory name)."""
        return self.path.name

    @property
    def config(self) -> repo_config.RepoConfig:
        """The current trust policy and subscribers."""
        return repo_config.load(self.path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the repository's write lock (across processes and threads)."""
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def version_tags(self) -> dict[int, bytes]:
        """Version number to tag-object id, for every `refs/tags/vN`."""
        result = {}
        for ref, sha in self.git.refs.as_dict(Ref(b"refs/tags")).items():
            number = version_of_ref(b"refs/tags/" + ref)
            if number is not None:
                result[number] = bytes(sha)
        return result

    def latest(self) -> int:
        """The highest version number, 0 when there is none yet."""
        return max(self.version_tags(), default=0)

    def tag(self, number: int) -> Tag:
        """The annotated tag object of version `number`."""
        try:
            sha = self.git.refs[Ref(version_ref(number))]
        except KeyError:
            raise NotFound(
                f"{self.name}: version {number} does not exist (latest is {self.latest()})"
            ) from None
        obj = self.git[sha]
        if not isinstance(obj, Tag):
            raise NotFound(f"{self.name}: v{number} is not an annotated tag")
        return obj

    def commit(self, number: int) -> Commit:
        """The commit version `number` tags."""
        _, target = self.tag(number).object
        obj = self.git[target]
        if not isinstance(obj, Commit):
            raise NotFound(f"{self.name}: v{number} does not tag a commit")
        return obj

    def files(self, number: int) -> dict[str, bytes]:
        """Path to blob id of every file in version `number`."""
        return tree_files(self.git, self.commit(number).tree)

    def file(self, number: int, name: str) -> FileEntry:
        """A file of version `number` (a disk's entry carries its LFS pointer)."""
        name = file_path(name)
        blob_id = self.files(number).get(name)
        if blob_id is None:
            raise NotFound(f"{self.name}: version {number} has no file {name!r}")
        data = self.git[blob_id].as_raw_string()
        pointer = None
        if lfs_pointer.looks_like_pointer(data):
            pointer = lfs_pointer.parse(data, f"{self.name} v{number}:{name}")
        return FileEntry(name, blob_id.decode(), data, pointer)

    def raw_tag(self, number: int) -> bytes:
        """The raw bytes of version `number`'s tag object (what its signature covers)."""
        return self.tag(number).as_raw_string()

    def signature(self, number: int) -> signatures.SignatureStatus:
        """Signature status of version `number`, verified against the trusted keys and bound to
        this repository by name (memoised; the push checked the appliance binding)."""
        tag = self.tag(number)
        key = (str(self.path), tag.id, self._trust_stamp())
        if key not in _signature_memo:
            _signature_memo[key] = signatures.verify(self.path, tag.as_raw_string(), self.name)
        return _signature_memo[key]

    def _trust_stamp(self) -> str:
        """Changes whenever the trusted keys change, so memoised verdicts are not stale."""
        parts = []
        for path in (
            repo_config.gpg_key_dir(self.path),
            repo_config.allowed_signers_file(self.path),
        ):
            try:
                parts.append(str(path.stat().st_mtime_ns))
            except FileNotFoundError:
                parts.append("-")
        return ":".join(parts)

    def version(self, number: int) -> VersionInfo:
        """Everything the index says about version `number`."""
        tag = self.tag(number)
        status = self.signature(number)
        return VersionInfo(
            number=number,
            tag=f"v{number}",
            tag_id=tag.id.decode(),
            commit=tag.object[1].decode(),
            signed=status.signed,
            signer=status.signer,
            date=tag.tag_time,
            files=sorted(self.files(number)),
        )

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first."""
        return [self.version(n) for n in sorted(self.version_tags())]

    def disks(self, number: int) -> list[dict[str, object]]:
        """Per disk file of version `number`: its object chain base→top with sizes and hashes."""
        result = []
        for name in sorted(self.files(number)):
            entry = self.file(number, name)
            if entry.pointer is None:
                continue
            ids = chain(self.store, entry.pointer.oid)
            top = self.store.verified_path(entry.pointer.oid)
            result.append(
                {
                    "name": name,
                    "sha256": entry.pointer.oid,
                    "size": entry.pointer.size,
                    "format": read_header(top).format,
                    "chain": [{"sha256": oid, "size": self.store.size(oid)} for oid in ids],
                }
            )
        return result


def tree_files(git: Repo, tree_id: bytes, prefix: str = "") -> dict[str, bytes]:
    """Flatten a git tree into path -> blob id (files only)."""
    tree = git[tree_id]
    if not isinstance(tree, Tree):
        raise NotFound(f"object {tree_id.decode()} is not a tree")
    result: dict[str, bytes] = {}
    for item in tree.items():
        path = prefix + item.path.decode("utf-8", errors="replace")
        if stat.S_ISDIR(item.mode):
            result.update(tree_files(git, item.sha, path + "/"))
        elif isinstance(git[item.sha], Blob):
            result[path] = item.sha
    return result


def open_repository(root: Path, name: str) -> Repository:
    """Open repository `name` (already validated by `names.repository_name`) under `root`."""
    path = Path(root) / name
    if not path.is_dir():
        raise NotFound(f"no repository named {name!r}")
    return Repository(path)


def list_repositories(root: Path) -> list[Repository]:
    """Every repository directly under `root`, by name."""
    result = []
    for child in sorted(Path(root).iterdir()):
        if _valid_name(child.name) and (child / repo_config.CONFIG_FILE).exists():
            try:
                result.append(Repository(child))
            except NotFound:
                continue
    return result


def _valid_name(name: str) -> bool:
    try:
        repository_name(name)
    except BadRequest:
        return False
    return True
