"""Git object hygiene: the checks `git fsck --strict` (and `receive.fsckObjects`) makes, in Python.

Pure: functions of raw object bytes; `check_objects` takes the pushed objects and a lookup for
blobs a pushed tree names (`.gitmodules`, symlink targets) that may already be stored.
Following git's fsck.c: trees (names `.`/`..`/empty/with `/`, `.git` in any case and in the
spellings HFS+ and NTFS treat as `.git` -- ignorable Unicode code points, trailing dots and
spaces, the 8.3 name `git~1`, components after a backslash --, modes other than 100644,
100755, 120000, 40000 and 160000, zero-padded modes, unsorted and duplicate entries,
`.gitmodules` as a symlink), commits and tags (header order, identities, dates, time zones,
NUL in headers), and `.gitmodules` contents (names with a `..` component, URLs and paths that
look like command-line options, `!command` updates, URLs that escape their host). On top of git,
symlinks may not point outside the tree (absolute, or any `..` component) nor into `.git`.

Every problem raises `BadGitObject` naming the object and the rule; never the object's content
beyond the offending name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import unquote, urlsplit

from reposerver.errors import BadGitObject

BLOB, TREE, COMMIT, TAG = 3, 2, 1, 4
TYPE_NAMES = {BLOB: b"blob", TREE: b"tree", COMMIT: b"commit", TAG: b"tag"}
MODES = {b"100644", b"100755", b"120000", b"40000", b"160000"}
DIR_MODE, LINK_MODE, GITLINK_MODE = b"40000", b"120000", b"160000"
MAX_GITMODULES = 64 * 1024
MAX_SYMLINK = 4095
HFS_IGNORABLE = frozenset(
    [0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF]
)
_IDENT = re.compile(rb"[^<>\n]* <[^<>\n]*> (0|[1-9][0-9]{0,18}) [+-][0-9]{4}")
_HEX = re.compile(rb"[0-9a-f]{40}")
_TAG_NAME = re.compile(rb"[^\x00-\x20\x7f~^:?*\[\\]+")

Lookup = Callable[[bytes], tuple[int, bytes] | None]
"""`lookup(hex sha)`: (type number, raw body) of a stored or pushed object, None if absent."""


def _bad(sha: bytes, problem: str) -> BadGitObject:
    return BadGitObject(f"git object {sha.decode()}: {problem} (git fsck --strict refuses it)")


def _shown(name: bytes) -> str:
    return repr(name.decode("utf-8", errors="replace"))[:80]


# -- names (git's utf8.c is_hfs_dotgit*, path.c is_ntfs_dotgit*) -----------------------------


def _hfs_folded(name: bytes) -> str | None:
    """The name with HFS+ ignorable code points removed, lower-cased; None if not UTF-8."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "".join(c for c in text if ord(c) not in HFS_IGNORABLE).lower()


def is_hfs_dot(name: bytes, needle: str) -> bool:
    """True when HFS+ would treat `name` as `.needle` (ignorable code points, any case)."""
    return _hfs_folded(name) == "." + needle


def _ntfs_tail_ok(rest: bytes) -> bool:
    """Trailing dots and spaces are dropped by NTFS; `:` starts an alternate data stream."""
    for c in rest.decode("latin-1"):
        if c in "\\/:":
            return True
        if c not in ". ":
            return False
    return True


def is_ntfs_dot(
    name: bytes, needle: bytes, short: bytes, hashed: bytes | None = None, digits: bytes = b"1234"
) -> bool:
    """True when NTFS would treat `name` as `.needle` or its 8.3 short name (`short~N`)."""
    lower = name.lower()
    if lower.startswith(b"." + needle) and _ntfs_tail_ok(lower[len(needle) + 1 :]):
        return True
    for prefix, allowed in ((short, digits), (hashed, b"123456789")):
        if prefix is None or not lower.startswith(prefix + b"~") or len(lower) < len(prefix) + 2:
            continue
        if lower[len(prefix) + 1] in allowed and _ntfs_tail_ok(lower[len(prefix) + 2 :]):
            return True
    return False


def is_dotgit(name: bytes) -> bool:
    """`.git` as git, HFS+ or NTFS (also after a backslash) would see it."""
    parts = [name, *name.split(b"\\")[1:]]
    return is_hfs_dot(name, "git") or any(
        is_ntfs_dot(p, b"git", b"git", digits=b"1") for p in parts
    )


def is_dotgitmodules(name: bytes) -> bool:
    """`.gitmodules` in the spellings git's fsck recognises (HFS+, NTFS, 8.3 names)."""
    return is_hfs_dot(name, "gitmodules") or is_ntfs_dot(name, b"gitmodules", b"gitmod", b"gi7eba")


def _is_special_file(name: bytes) -> bool:
    for needle, short, hashed in (
        ("gitattributes", b"gitatt", b"gi7d29"),
        ("gitignore", b"gitign", b"gi250a"),
        ("mailmap", b"mailma", b"maba30"),
    ):
        if is_hfs_dot(name, needle) or is_ntfs_dot(name, needle.encode(), short, hashed):
            return True
    return False


# -- trees ------------------------------------------------------------------------------------


def tree_entries(sha: bytes, body: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The (mode, name, hex sha) entries of a raw tree body.

    Raises:
        BadGitObject: a malformed entry.
    """
    entries = []
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        nul = body.find(b"\0", space + 1) if space >= 0 else -1
        if space < 0 or nul < 0 or nul + 21 > len(body):
            raise _bad(sha, "malformed tree entry")
        entries.append(
            (body[pos:space], body[space + 1 : nul], body[nul + 1 : nul + 21].hex().encode())
        )
        pos = nul + 21
    return entries


def _sort_key(mode: bytes, name: bytes) -> bytes:
    return name + b"/" if mode.lstrip(b"0") == DIR_MODE else name


def check_tree(sha: bytes, body: bytes) -> tuple[list[bytes], list[bytes]]:
    """Check a tree; return the hex ids of its `.gitmodules` blobs and of its symlink targets."""
    gitmodules, links = [], []
    previous: bytes | None = None
    names: set[bytes] = set()
    for mode, name, entry in tree_entries(sha, body):
        _check_entry_name(sha, name)
        if mode.startswith(b"0"):
            raise _bad(sha, f"entry {_shown(name)} has a zero-padded file mode")
        if mode not in MODES:
            raise _bad(
                sha, f"entry {_shown(name)} has a bad file mode {mode.decode(errors='replace')}"
            )
        if entry == b"0" * 40:
            raise _bad(sha, f"entry {_shown(name)} points at the null object id")
        if name in names:
            raise _bad(sha, f"duplicate entry {_shown(name)}")
        names.add(name)
        key = _sort_key(mode, name)
        if previous is not None and key <= previous:
            raise _bad(sha, f"entries are not sorted (at {_shown(name)})")
        previous = key
        if is_dotgitmodules(name):
            if mode == LINK_MODE:
                raise _bad(sha, ".gitmodules is a symbolic link")
            gitmodules.append(entry)  # a tree or gitlink there is refused as "not a blob"
        if mode == LINK_MODE:
            if _is_special_file(name):
                raise _bad(sha, f"{_shown(name)} is a symbolic link")
            links.append(entry)
    return gitmodules, links


def _check_entry_name(sha: bytes, name: bytes) -> None:
    if not name:
        raise _bad(sha, "an entry has an empty name")
    if b"/" in name:
        raise _bad(sha, f"entry {_shown(name)} contains '/' (a full path name)")
    if b"\0" in name:
        raise _bad(sha, "an entry name contains NUL")
    if name in (b".", b".."):
        raise _bad(sha, f"entry {_shown(name)} is '.' or '..'")
    if is_dotgit(name):
        raise _bad(
            sha, f"entry {_shown(name)} is '.git' (in some spelling git, HFS+ or NTFS folds)"
        )


# -- commits and tags -------------------------------------------------------------------------


def _headers(sha: bytes, body: bytes) -> list[tuple[bytes, bytes]]:
    end = body.find(b"\n\n")
    head = body if end < 0 else body[: end + 1]
    if b"\0" in head:
        raise _bad(sha, "NUL byte in the object header")
    if end < 0 and not body.endswith(b"\n"):
        raise _bad(sha, "unterminated object header")
    lines = []
    for line in head.split(b"\n")[:-1]:
        if line.startswith(b" "):
            continue  # continuation of a multi-line header (gpgsig, mergetag)
        key, _, value = line.partition(b" ")
        lines.append((key, value))
    return lines


def _check_ident(sha: bytes, what: str, value: bytes) -> None:
    if value.startswith(b"<"):
        raise _bad(sha, f"{what}: missing name before the email")
    if not _IDENT.fullmatch(value):
        raise _bad(sha, f"{what}: malformed identity (NAME <EMAIL> SECONDS +ZZZZ)")
    if int(value.rsplit(b" ", 2)[1]) >= 1 << 63:
        raise _bad(sha, f"{what}: date overflows")


def check_commit(sha: bytes, body: bytes) -> None:
    headers = _headers(sha, body)
    keys = [k for k, _ in headers]
    if not keys or keys[0] != b"tree" or not _HEX.fullmatch(headers[0][1]):
        raise _bad(sha, "a commit starts with 'tree <id>'")
    i = 1
    while i < len(keys) and keys[i] == b"parent":
        if not _HEX.fullmatch(headers[i][1]):
            raise _bad(sha, "bad parent id")
        i += 1
    if keys[i : i + 2] != [b"author", b"committer"]:
        raise _bad(sha, "a commit needs one author then one committer after tree and parents")
    if keys.count(b"author") != 1 or keys.count(b"committer") != 1 or keys.count(b"tree") != 1:
        raise _bad(sha, "multiple tree, author or committer lines")
    _check_ident(sha, "author", headers[i][1])
    _check_ident(sha, "committer", headers[i + 1][1])


def check_tag(sha: bytes, body: bytes) -> None:
    headers = _headers(sha, body)
    keys = [k for k, _ in headers]
    if keys[:3] != [b"object", b"type", b"tag"]:
        raise _bad(sha, "a tag starts with 'object', 'type' and 'tag' lines")
    if not _HEX.fullmatch(headers[0][1]):
        raise _bad(sha, "bad object id")
    if headers[1][1] not in TYPE_NAMES.values():
        raise _bad(sha, "unknown type")
    name = headers[2][1]
    if (
        not _TAG_NAME.fullmatch(name)
        or b".." in name
        or name.startswith(b"-")
        or name.endswith((b".", b".lock"))
    ):
        raise _bad(sha, "bad tag name")
    if len(keys) < 4 or keys[3] != b"tagger":
        raise _bad(sha, "a tag needs a tagger line")
    _check_ident(sha, "tagger", headers[3][1])


# -- .gitmodules and symlink targets ----------------------------------------------------------


def _looks_like_option(value: str) -> bool:
    return value.startswith("-")


def gitmodules_entries(sha: bytes, body: bytes) -> list[tuple[str, str, str]]:
    """Parse `.gitmodules` as git config: (submodule name, key, value) per setting.

    Raises:
        BadGitObject: not parseable (git reports it; a repository refuses it).
    """
    if len(body) > MAX_GITMODULES:
        raise _bad(sha, ".gitmodules is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(sha, ".gitmodules is not UTF-8") from None
    found = []
    section: tuple[str, str | None] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = _section(sha, line, number)
            continue
        if section is None:
            raise _bad(sha, f".gitmodules line {number}: a setting outside any section")
        key, sep, value = line.partition("=")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", key.strip()):
            raise _bad(sha, f".gitmodules line {number}: bad key")
        if section[0] == "submodule" and section[1] is not None:
            found.append(
                (section[1], key.strip().lower(), _value(sha, value, number) if sep else "")
            )
    return found


def _section(sha: bytes, line: str, number: int) -> tuple[str, str | None]:
    match = re.fullmatch(
        r'\[\s*([A-Za-z0-9.-]+)(?:\s+"((?:[^"\\\n]|\\.)*)")?\s*\]\s*(?:[#;].*)?', line
    )
    if not match:
        raise _bad(sha, f".gitmodules line {number}: malformed section header")
    kind, sub = match.group(1), match.group(2)
    if sub is not None:
        return kind.lower(), re.sub(r"\\(.)", r"\1", sub)
    if "." in kind:
        head, _, rest = kind.partition(".")
        return head.lower(), rest
    return kind.lower(), None


def _value(sha: bytes, value: str, number: int) -> str:
    out, quoted, i = [], False, 0
    value = value.strip()
    while i < len(value):
        c = value[i]
        if c == '"':
            quoted = not quoted
        elif c == "\\" and i + 1 < len(value):
            i += 1
            out.append({"n": "\n", "t": "\t", "b": "\b"}.get(value[i], value[i]))
        elif c in "#;" and not quoted:
            break
        else:
            out.append(c)
        i += 1
    if quoted:
        raise _bad(sha, f".gitmodules line {number}: unterminated quote")
    return "".join(out).strip()


def check_submodule_name(name: str) -> bool:
    """git's rule: not empty, and no `..` path component (`/` or `\\` separated)."""
    return bool(name) and ".." not in re.split(r"[/\\]", name)


def check_submodule_url(url: str) -> bool:
    """git's rule (submodule.c check_submodule_url), as far as a repository needs it."""
    if _looks_like_option(url) or "\n" in unquote(url):
        return False
    if url.startswith(("./", "../")) or url.startswith("git://"):
        rest = url[len("git://") :] if url.startswith("git://") else url
        while rest.startswith(("./", "../")):
            rest = rest.split("/", 1)[1]
        return not rest.startswith((":", "/"))
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url):
        try:
            return bool(urlsplit(url).hostname)
        except ValueError:
            return False
    return True


def check_gitmodules(sha: bytes, body: bytes) -> None:
    for name, key, value in gitmodules_entries(sha, body):
        if not check_submodule_name(name):
            raise _bad(sha, f".gitmodules: disallowed submodule name {name[:60]!r}")
        if key == "url" and not check_submodule_url(value):
            raise _bad(sha, f".gitmodules: disallowed url of submodule {name[:60]!r}")
        if key == "path" and _looks_like_option(value):
            raise _bad(sha, f".gitmodules: disallowed path of submodule {name[:60]!r}")
        if key == "update" and value.startswith("!"):
            raise _bad(sha, f".gitmodules: disallowed update command of submodule {name[:60]!r}")


def check_symlink(sha: bytes, target: bytes) -> None:
    """A symlink stays inside the tree: relative, no `..` component, not into `.git`."""
    if not target or len(target) > MAX_SYMLINK or b"\0" in target:
        raise _bad(sha, "symbolic link target is empty, too long or contains NUL")
    if target.startswith((b"/", b"\\")) or re.match(rb"[A-Za-z]:", target):
        raise _bad(sha, "symbolic link points outside the tree (absolute target)")
    parts = re.split(rb"[/\\]", target)
    if b".." in parts:
        raise _bad(sha, "symbolic link points outside the tree ('..' component)")
    if any(is_dotgit(p) for p in parts):
        raise _bad(sha, "symbolic link points into '.git'")


# -- a whole push -----------------------------------------------------------------------------


def check_objects(objects: Iterable[tuple[bytes, int, bytes]], lookup: Lookup) -> int:
    """Check every (hex sha, type number, raw body) object, then the blobs its trees name.

    Returns how many objects were checked.

    Raises:
        BadGitObject: the first problem found.
    """
    gitmodules: set[bytes] = set()
    links: set[bytes] = set()
    count = 0
    for sha, kind, body in objects:
        count += 1
        if kind == TREE:
            found_modules, found_links = check_tree(sha, body)
            gitmodules.update(found_modules)
            links.update(found_links)
        elif kind == COMMIT:
            check_commit(sha, body)
        elif kind == TAG:
            check_tag(sha, body)
        elif kind != BLOB:
            raise _bad(sha, "unknown object type")
    for sha in sorted(gitmodules):
        check_gitmodules(sha, _blob(sha, lookup, ".gitmodules"))
    for sha in sorted(links):
        check_symlink(sha, _blob(sha, lookup, "symbolic link"))
    return count


def _blob(sha: bytes, lookup: Lookup, what: str) -> bytes:
    found = lookup(sha)
    if found is None:
        raise _bad(sha, f"the {what} blob is missing")
    kind, body = found
    if kind != BLOB:
        raise _bad(sha, f"the {what} entry is not a blob")
    return body
