"""Git object hygiene (`reposerver.fsck`): one test per rule, each cross-checked against real
`git fsck --strict` on the same bytes, plus properties over generated names and trees."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reposerver import fsck
from reposerver.errors import BadGitObject

BLOB_ID = bytes.fromhex("e69de29bb2d1d6434b8b29ae775a72d8c6e54391")  # the empty blob
EMPTY_TREE = bytes.fromhex("4b825dc642cb6eb9a060e54bf8d69288fbee4904")
IDENT = b"A U Thor <a@example.org> 1700000000 +0000"


def entry(mode: bytes, name: bytes, sha: bytes = BLOB_ID) -> bytes:
    return mode + b" " + name + b"\0" + sha


def tree(*entries: bytes) -> bytes:
    return b"".join(entries)


def git_fsck_flags(tmp_path: Path, kind: str, body: bytes, blobs: dict[bytes, bytes]) -> bool:
    """True when real `git fsck --strict` reports a problem with the object `body`."""
    repo = tmp_path / "g"
    if not repo.exists():
        subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    for data in [b"", *blobs.values()]:
        subprocess.run(["git", "hash-object", "-w", "--stdin"], input=data, cwd=repo, check=True,
                       capture_output=True)  # fmt: skip
    sha = subprocess.run(
        ["git", "hash-object", "-w", "--literally", "-t", kind, "--stdin"],
        input=body, cwd=repo, check=True, capture_output=True,
    ).stdout.strip()  # fmt: skip
    result = subprocess.run(
        ["git", "fsck", "--strict", "--no-dangling", "--no-progress"], cwd=repo,
        capture_output=True,
    )  # fmt: skip
    report = result.stdout + result.stderr
    return result.returncode != 0 or sha in report or b"warning" in report


def ours(kind: int, body: bytes, blobs: dict[bytes, bytes] | None = None) -> None:
    blobs = blobs or {}
    fsck.check_objects(
        [(b"1" * 40, kind, body)],
        lambda sha: (fsck.BLOB, blobs[sha]) if sha in blobs else None,
    )


def blob_of(data: bytes) -> tuple[bytes, bytes]:
    sha = subprocess.run(["git", "hash-object", "--stdin"], input=data, capture_output=True,
                         check=True).stdout.strip()  # fmt: skip
    return sha, bytes.fromhex(sha.decode())


GITMODULES_DASH_URL = b'[submodule "x"]\n\tpath = x\n\turl = --upload-pack=touch /tmp/pwned\n'
GITMODULES_DOTDOT_NAME = b'[submodule "../../hooks"]\n\tpath = x\n\turl = https://example.org/x\n'
GITMODULES_DASH_PATH = b'[submodule "x"]\n\tpath = -x\n\turl = https://example.org/x\n'
GITMODULES_UPDATE = b'[submodule "x"]\n\tpath = x\n\tupdate = !sh -c id\n'

TREE_CASES = {
    "dotgit": (tree(entry(b"40000", b".git", bytes(20))), "'.git'"),
    "DOTGIT": (tree(entry(b"100644", b".GIT")), "'.git'"),
    "dotgit-trailing-dot": (tree(entry(b"100644", b".git.")), "'.git'"),
    "dotgit-trailing-space": (tree(entry(b"100644", b".git ")), "'.git'"),
    "git~1": (tree(entry(b"100644", b"GIT~1")), "'.git'"),
    "dotgit-hfs-zwj": (tree(entry(b"100644", ".g\u200dit".encode())), "'.git'"),
    "dotgit-hfs-bom": (tree(entry(b"100644", "\ufeff.GIT".encode())), "'.git'"),
    "dotgit-ntfs-stream": (tree(entry(b"100644", b".git::$INDEX_ALLOCATION")), "'.git'"),
    "dotgit-after-backslash": (tree(entry(b"100644", b"a\\.git")), "'.git'"),
    "dot": (tree(entry(b"100644", b".")), "'.' or '..'"),
    "dotdot": (tree(entry(b"40000", b"..")), "'.' or '..'"),
    "empty-name": (tree(entry(b"100644", b"")), "empty name"),
    "full-path": (tree(entry(b"100644", b"a/b")), "full path"),
    "bad-mode": (tree(entry(b"100666", b"a")), "bad file mode"),
    "group-writable-mode": (tree(entry(b"100664", b"a")), "bad file mode"),
    "zero-padded-mode": (tree(entry(b"0100644", b"a")), "zero-padded"),
    "zero-padded-dir": (tree(entry(b"040000", b"a")), "zero-padded"),
    "duplicate": (tree(entry(b"100644", b"a"), entry(b"100644", b"a")), "duplicate"),
    "duplicate-file-and-dir": (tree(entry(b"100644", b"a"), entry(b"40000", b"a")), "duplicate"),
    "unsorted": (tree(entry(b"100644", b"b"), entry(b"100644", b"a")), "not sorted"),
    "null-sha": (tree(entry(b"100644", b"a", bytes(20))), "null object"),
    "gitmodules-symlink": (tree(entry(b"120000", b".gitmodules")), "symbolic link"),
}


def test_control_git_fsck_accepts_a_good_tree(tmp_path: Path) -> None:
    """The cross-check can fail: git accepts what is fine."""
    body = tree(entry(b"100644", b"a"), entry(b"100755", b"b"), entry(b"40000", b"c", EMPTY_TREE))
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "g")], check=True)
    subprocess.run(["git", "hash-object", "-w", "-t", "tree", "--stdin"], input=b"",
                   cwd=tmp_path / "g", check=True, capture_output=True)  # fmt: skip
    assert not git_fsck_flags(tmp_path, "tree", body, {})
    ours(fsck.TREE, body)


@pytest.mark.parametrize("case", sorted(TREE_CASES))
def test_tree_rule_matches_git_fsck_strict(tmp_path: Path, case: str) -> None:
    body, message = TREE_CASES[case]
    with pytest.raises(BadGitObject, match=message):
        ours(fsck.TREE, body, {BLOB_ID.hex().encode(): b""})
    if case not in ("null-sha",):  # git reports the null id only as a dangling problem
        assert git_fsck_flags(tmp_path, "tree", body, {}), f"git fsck --strict accepts {case}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (GITMODULES_DASH_URL, "disallowed url"),
        (GITMODULES_DOTDOT_NAME, "disallowed submodule name"),
        (GITMODULES_DASH_PATH, "disallowed path"),
        (b'[submodule "x"]\n\turl = ../../:evil\n', "disallowed url"),
        (b'[submodule "x"]\n\turl = https://host/%0aevil\n', "disallowed url"),
    ],
)
def test_gitmodules_rules_match_git(tmp_path: Path, content: bytes, message: str) -> None:
    hex_id, raw_id = blob_of(content)
    for name in (b".gitmodules", b".GITMODULES", b"gitmod~1", b".gitmodules ."):
        body = tree(entry(b"100644", name, raw_id))
        with pytest.raises(BadGitObject, match=message):
            ours(fsck.TREE, body, {hex_id: content})
    body = tree(entry(b"100644", b".gitmodules", raw_id))
    assert git_fsck_flags(tmp_path, "tree", body, {hex_id: content})


def test_gitmodules_update_command_refused() -> None:
    hex_id, raw_id = blob_of(GITMODULES_UPDATE)
    with pytest.raises(BadGitObject, match="update command"):
        ours(fsck.TREE, tree(entry(b"100644", b".gitmodules", raw_id)), {hex_id: GITMODULES_UPDATE})


def test_gitmodules_directory_refused_as_git_does(tmp_path: Path) -> None:
    body = tree(entry(b"40000", b".gitmodules", EMPTY_TREE))
    lookup = {EMPTY_TREE.hex().encode(): (fsck.TREE, b"")}
    with pytest.raises(BadGitObject, match="not a blob"):
        fsck.check_objects([(b"1" * 40, fsck.TREE, body)], lookup.get)
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "g")], check=True)
    subprocess.run(["git", "hash-object", "-w", "-t", "tree", "--stdin"], input=b"",
                   cwd=tmp_path / "g", check=True, capture_output=True)  # fmt: skip
    assert git_fsck_flags(tmp_path, "tree", body, {})


def test_missing_gitmodules_blob_refused() -> None:
    with pytest.raises(BadGitObject, match="missing"):
        ours(fsck.TREE, tree(entry(b"100644", b".gitmodules", b"\x42" * 20)))


@pytest.mark.parametrize(
    "target", [b"../../etc/passwd", b"/etc/passwd", b"a/../../x", b"..", b".git/config",
               b"C:\\x", b"", b"a\\..\\..\\x"],
)  # fmt: skip
def test_symlinks_must_stay_inside_the_tree(target: bytes) -> None:
    hex_id, raw_id = blob_of(target)
    with pytest.raises(BadGitObject, match="symbolic link"):
        ours(fsck.TREE, tree(entry(b"120000", b"link", raw_id)), {hex_id: target})


def test_good_tree_with_inside_symlink_passes() -> None:
    hex_id, raw_id = blob_of(b"sub/file")
    body = tree(
        entry(b"100644", b".gitattributes"), entry(b"120000", b"link", raw_id),
        entry(b"100755", b"run.sh"), entry(b"40000", b"sub", EMPTY_TREE),
    )  # fmt: skip
    ours(fsck.TREE, body, {hex_id: b"sub/file"})


COMMIT_CASES = {
    "no-tree": (b"author " + IDENT + b"\ncommitter " + IDENT + b"\n\nm\n", "starts with 'tree"),
    "missing-email": (b"tree " + b"a" * 40 + b"\nauthor A 1 +0000\ncommitter " + IDENT + b"\n\n",
                      "malformed identity"),
    "zero-padded-date": (b"tree " + b"a" * 40 + b"\nauthor A <a> 01 +0000\ncommitter " + IDENT
                         + b"\n\n", "malformed identity"),
    "bad-timezone": (b"tree " + b"a" * 40 + b"\nauthor A <a> 1 +00\ncommitter " + IDENT + b"\n\n",
                     "malformed identity"),
    "no-name": (b"tree " + b"a" * 40 + b"\nauthor <a> 1 +0000\ncommitter " + IDENT + b"\n\n",
                "missing name"),
    "two-authors": (b"tree " + b"a" * 40 + b"\nauthor " + IDENT + b"\nauthor " + IDENT
                    + b"\ncommitter " + IDENT + b"\n\n", "author then one committer"),
    "nul-in-header": (b"tree " + b"a" * 40 + b"\nauthor " + IDENT + b"\0\ncommitter " + IDENT
                      + b"\n\n", "NUL"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(COMMIT_CASES))
def test_commit_rule_matches_git_fsck_strict(tmp_path: Path, case: str) -> None:
    body, message = COMMIT_CASES[case]
    with pytest.raises(BadGitObject, match=message):
        ours(fsck.COMMIT, body)
    assert git_fsck_flags(tmp_path, "commit", body, {})


SIGNED = b"\ngpgsig -----BEGIN SSH SIGNATURE-----\n x\n -----END SSH SIGNATURE-----\n\nmsg\n"


def test_good_commit_and_tag_pass() -> None:
    ours(
        fsck.COMMIT, b"tree " + b"a" * 40 + b"\nauthor " + IDENT + b"\ncommitter " + IDENT + SIGNED
    )
    ours(fsck.TAG, b"object " + b"a" * 40 + b"\ntype commit\ntag v1\ntagger " + IDENT + b"\n\nv1\n")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"object " + b"a" * 40 + b"\ntype commit\ntag v1\n\nm\n", "tagger"),
        (b"object " + b"a" * 40 + b"\ntype nonsense\ntag v1\ntagger " + IDENT + b"\n\n", "type"),
        (b"object " + b"a" * 40 + b"\ntype commit\ntag ../x\ntagger " + IDENT + b"\n\n", "name"),
        (b"type commit\nobject " + b"a" * 40 + b"\ntag v1\ntagger " + IDENT + b"\n\n", "starts"),
    ],
)
def test_tag_rules(body: bytes, message: str) -> None:
    with pytest.raises(BadGitObject, match=message):
        ours(fsck.TAG, body)


names = st.text(st.sampled_from(list(".gitGIT~1 \u200c\u200d\ufeffmodules\\:abc")), max_size=14)


@given(names)
def test_every_spelling_that_folds_to_dotgit_is_refused(name: str) -> None:
    """A name HFS+ folds to `.git` (ignorable code points dropped, case folded) or that NTFS
    reads as `.git` (trailing dots/spaces dropped, `git~1`) is refused; other names pass."""
    raw = name.encode()
    folded = "".join(c for c in name if ord(c) not in fsck.HFS_IGNORABLE).lower()
    ntfs = name.lower().split(":")[0].rstrip(". ")
    is_git = folded == ".git" or ntfs in (".git", "git~1") or any(
        p.lower().split(":")[0].rstrip(". ") in (".git", "git~1") for p in name.split("\\")[1:]
    )  # fmt: skip
    body = tree(entry(b"100644", raw))
    if not raw or raw in (b".", b".."):
        return
    if is_git:
        with pytest.raises(BadGitObject, match="'.git'"):
            ours(fsck.TREE, body)
    elif not fsck.is_dotgitmodules(raw) and not fsck.is_dotgit(raw):
        ours(fsck.TREE, body)


@given(st.binary(max_size=300), st.sampled_from([fsck.TREE, fsck.COMMIT, fsck.TAG, fsck.BLOB]))
def test_arbitrary_objects_only_raise_our_error(body: bytes, kind: int) -> None:
    try:
        ours(kind, body)
    except BadGitObject:
        pass


@given(st.binary(max_size=500))
def test_arbitrary_gitmodules_only_raise_our_error(content: bytes) -> None:
    try:
        fsck.check_gitmodules(b"2" * 40, content)
    except BadGitObject:
        pass


tree_names = st.text(st.sampled_from(list(".gGiItT~1 \u200cam-\\:")), min_size=1, max_size=6)
tree_modes = st.sampled_from([b"100644", b"100755", b"40000", b"100664", b"100600", b"0100644"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(tree_modes, tree_names), min_size=1, max_size=4))
def test_verdict_agrees_with_git_fsck_strict(tmp_path_factory, entries) -> None:
    """On generated trees (names near `.git`, good and bad modes, in git's order or not), we
    refuse exactly when real `git fsck --strict` complains."""
    body = tree(*(entry(mode, name.encode(), EMPTY_TREE if mode == b"40000" else BLOB_ID)
                  for mode, name in entries))  # fmt: skip
    repo = tmp_path_factory.mktemp("cmp")
    subprocess.run(["git", "init", "-q", "--bare", str(repo / "g")], check=True)
    subprocess.run(["git", "hash-object", "-w", "-t", "tree", "--stdin"], input=b"",
                   cwd=repo / "g", check=True, capture_output=True)  # fmt: skip
    git_refuses = git_fsck_flags(repo, "tree", body, {})
    try:
        ours(fsck.TREE, body, {BLOB_ID.hex().encode(): b""})
        we_refuse = False
    except BadGitObject:
        we_refuse = True
    assert we_refuse == git_refuses
