"""CVL bundles on disk: read from a user's directory (client side), stored by the daemon.

`read_bundle` is what `cui start FILE.cvl` sends: the file and every plain `file:` directory it
imports (transitively) inside the bundle root, read by the user's own process. Symlinks are
refused (a bundle holds regular files only, so nothing outside the root is sent by accident),
and so are bundles over `utility.core.bundle.MAX_BYTES`. Imports outside the root, bare git
repositories and http(s) imports are not bundled: the daemon resolves them (refusing `file:`
ones for users).

`BundleStore` keeps every submitted bundle in the utility's state directory: file contents as
objects named by their sha256 under `bundles/` (written atomically: temporary file, fsync,
rename), the manifest in the database (`Store.save_bundle`). What a VAP version ran is its
bundle's digest; `StoredBundle` reads it back.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from utility.adapters.store import Store
from utility.core.bundle import MAX_BYTES, MAX_FILES, Bundle, BundleError
from utility.errors import NotFound

BUNDLES = "bundles"
VAPS = "vaps"


def vap_dir(state_dir: Path, vap_id: int) -> Path:
    """The utility's storage of one VAP: its VM directories (disks) and `.attic`."""
    return state_dir / VAPS / str(vap_id)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class _Reader:
    """Collects the files of a bundle, refusing symlinks and too much."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.notes: list[str] = []
        self.files: dict[str, bytes] = {}
        self.total = 0
        self.seen: set[tuple[str, str]] = set()

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def check_no_links(self, path: Path) -> None:
        """Refuse `path` if it or a directory between the root and it is a symlink."""
        current = self.root
        for part in path.relative_to(self.root).parts:
            current = current / part
            if current.is_symlink():
                raise BundleError(
                    f"{current} is a symbolic link; a bundle holds regular files only (copy "
                    f"the file into {self.root} instead)"
                )

    def add_file(self, path: Path) -> None:
        name = self.rel(path)
        if name in self.files:
            return
        self.check_no_links(path)
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return
        self.total += info.st_size
        if self.total > MAX_BYTES or len(self.files) >= MAX_FILES:
            raise BundleError(
                f"the bundle of {self.root} grew over {MAX_BYTES} bytes or {MAX_FILES} files at "
                f"{path}; keep large disks in a repository (or the CVL in its own directory)"
            )
        self.files[name] = path.read_bytes()

    def add_directory(self, directory: Path) -> None:
        """The regular files directly in `directory` (hidden ones skipped)."""
        self.check_no_links(directory)
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                self.check_no_links(entry)
            if entry.is_file():
                self.add_file(entry)

    def add_cvl(self, path: Path, base_dir: Path) -> None:
        """The CVL file `path` and, through its imports, what it reaches."""
        if (str(path), str(base_dir)) in self.seen:
            return
        self.seen.add((str(path), str(base_dir)))
        self.add_file(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return  # the daemon reports it
        for url, cvl_name in _file_imports(text, str(path)):
            self.add_import(url, cvl_name, base_dir)

    def add_import(self, url: str, cvl_name: str, base_dir: Path) -> None:
        from cvl.errors import CvlError
        from cvl.resolver import check_cvl_name, file_url_path, is_bare_repository

        try:
            directory = file_url_path(url, str(base_dir))
            check_cvl_name(cvl_name)
        except CvlError:
            return  # the daemon reports it where it is
        if not _inside(directory, str(self.root)):
            self.notes.append(
                f"{url} ({directory}) is outside the bundle root {self.root}: not sent; the "
                "utility resolves it on its own host only for VAPs an administrator starts"
            )
            return
        where = Path(directory)
        self.check_no_links(where)
        if not where.is_dir() or is_bare_repository(where):
            return  # a repository (the daemon's) or nothing: reported by the daemon
        self.add_directory(where)
        target = where / cvl_name
        if target.is_file() or target.is_symlink():
            self.add_cvl(target, where)


def _file_imports(text: str, file: str) -> list[tuple[str, str]]:
    """(url, cvl) of every `file:` import of a CVL text (nothing if it does not parse)."""
    from cvl.errors import CvlError
    from cvl.syntax import Str, parse

    try:
        program = parse(text, file)
    except CvlError:
        return []
    found = []
    for stmt in program.imports:
        spec = {p.key: p.value.value for p in stmt.spec.pairs if isinstance(p.value, Str)}
        url, cvl_name = spec.get("url"), spec.get("cvl")
        if url and cvl_name and url.startswith("file:"):
            found.append((url, cvl_name))
    return found


def read_bundle(cvl_file: Path, root: Path | None = None, notes: list[str] | None = None) -> Bundle:
    """The bundle of the user's CVL file (see the module docstring); `root` (default: the
    file's directory) bounds what is bundled; `notes` hears of each `file:` import left out
    because it lies outside the root.

    Raises:
        BundleError: a symlink, a file outside `root`, or a bundle too large.
        OSError: the file cannot be read.
    """
    path = Path(os.path.abspath(cvl_file))
    if not path.is_file():
        raise BundleError(f"{cvl_file}: no such CVL file")
    path = path.resolve()
    base = Path(os.path.abspath(root)).resolve() if root is not None else path.parent
    if not _inside(str(path.parent), str(base)):
        raise BundleError(f"{path} is not inside the bundle root {base}")
    reader = _Reader(base)
    reader.add_directory(path.parent)
    reader.add_cvl(path, path.parent)
    if notes is not None:
        notes.extend(dict.fromkeys(reader.notes))
    return Bundle(str(base), reader.rel(path), reader.files)


@dataclass(frozen=True)
class StoredBundle:
    """A bundle as the daemon stored it: its manifest, with contents in the object directory."""

    digest: str
    root_dir: str
    root: str
    manifest: dict[str, str]
    objects: Path
    memory: dict[str, bytes] | None = None
    """The contents while the bundle is checked, before it is stored (`BundleStore.pending`)."""

    @property
    def root_path(self) -> str:
        return f"{self.root_dir}/{self.root}"

    @property
    def text(self) -> str:
        """The user's CVL text."""
        return self.read(self.root).decode("utf-8")

    def has(self, name: str) -> bool:
        return name in self.manifest

    def object_path(self, name: str) -> Path:
        """The stored file of bundled path `name` (NotFound if it is not in the bundle)."""
        digest = self.manifest.get(name)
        if digest is None:
            raise NotFound(f"{name} is not in the bundle of {self.root_path}")
        return self.objects / digest

    def read(self, name: str) -> bytes:
        if self.memory is not None and name in self.memory:
            return self.memory[name]
        return self.object_path(name).read_bytes()

    def relative(self, directory: str) -> str | None:
        """`directory` (absolute, normalised) relative to the root ("" for the root), or None
        when it lies outside the bundle."""
        if directory == self.root_dir:
            return ""
        if _inside(directory, self.root_dir):
            return directory[len(self.root_dir.rstrip("/")) + 1 :]
        return None

    def files(self) -> dict[str, bytes]:
        return {name: self.read(name) for name in self.manifest}

    def describe(self) -> dict[str, object]:
        """The bundle as `cui show` prints it: digest, root and each file's size and sha256."""
        return {
            "digest": self.digest,
            "root_dir": self.root_dir,
            "root": self.root,
            "files": {
                name: {"sha256": sha, "size": len(self.read(name))}
                for name, sha in sorted(self.manifest.items())
            },
        }


class BundleStore:
    """Every submitted bundle of one state directory (see the module docstring)."""

    def __init__(self, state_dir: Path, store: Store) -> None:
        self.objects = state_dir / BUNDLES
        # qemu opens bundled program disks as backing files: searchable, not listable.
        self.objects.mkdir(exist_ok=True, mode=0o711)
        self.store = store

    def pending(self, bundle: Bundle) -> StoredBundle:
        """`bundle` as it will be stored, read from memory until `save` (checks run on it, so
        a refused bundle leaves nothing behind)."""
        return StoredBundle(
            bundle.digest(),
            bundle.root_dir,
            bundle.root,
            bundle.manifest(),
            self.objects,
            dict(bundle.files),
        )

    def save(self, bundle: Bundle) -> StoredBundle:
        """Store `bundle` (objects first, then its manifest); the stored form."""
        manifest = bundle.manifest()
        for name, data in bundle.files.items():
            self._write(manifest[name], data)
        digest = bundle.digest()
        self.store.save_bundle(digest, bundle.root_dir, bundle.root, manifest)
        return StoredBundle(digest, bundle.root_dir, bundle.root, manifest, self.objects)

    def load(self, digest: str) -> StoredBundle:
        """A stored bundle by digest (NotFound if unknown)."""
        root_dir, root, manifest = self.store.bundle(digest)
        return StoredBundle(digest, root_dir, root, manifest, self.objects)

    def _write(self, sha: str, data: bytes) -> None:
        target = self.objects / sha
        if target.exists():
            return
        temporary = self.objects / f".{sha}.{os.getpid()}.{threading.get_ident()}.tmp"
        with temporary.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        temporary.chmod(0o644)
        os.replace(temporary, target)
