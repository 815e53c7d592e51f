"""Issue 10 item 3: git object hygiene equal to `receive.fsckObjects`.

Each attack writes its hostile tree with stock git (`git hash-object --literally`, which skips
git's own checks), commits it as the next version on top of v1's files, and pushes it with
stock git over HTTP to real gunicorn; the push is refused with a message naming the rule, and
the refs, the git objects, the LFS store are unchanged and `git fsck --strict` stays clean.
"""

from __future__ import annotations

import pytest

from .conftest import HostilePushSite, hostile_push_git

pytestmark = pytest.mark.slow
GITMODULES_DASH_URL = b'[submodule "x"]\n\tpath = x\n\turl = --upload-pack=touch${IFS}/tmp/p\n'
GITMODULES_DOTDOT_NAME = b'[submodule "../../modules/x"]\n\tpath = x\n\turl = https://h/x\n'
HOOK = b"#!/bin/sh\ntouch /tmp/pwned\n"


def blob(work, data: bytes) -> bytes:
    return hostile_push_git("hash-object", "-w", "--stdin", cwd=work, stdin=data).stdout.strip()


def write_tree(work, entries: list[tuple[bytes, bytes, bytes]], sort: bool = True) -> bytes:
    """A tree object of raw (mode, name, hex id) entries, written without git's checks."""
    if sort:
        entries = sorted(
            entries, key=lambda e: e[1] + (b"/" if e[0] in (b"40000", b"040000") else b"")
        )
    body = b"".join(m + b" " + n + b"\0" + bytes.fromhex(i.decode()) for m, n, i in entries)
    return hostile_push_git("hash-object", "-w", "--literally", "-t", "tree", "--stdin",
                            cwd=work, stdin=body).stdout.strip()  # fmt: skip


def v1_entries(work) -> list[tuple[bytes, bytes, bytes]]:
    listing = hostile_push_git("ls-tree", "-z", "HEAD", cwd=work).stdout
    entries = []
    for line in listing.split(b"\0"):
        if line:
            meta, name = line.split(b"\t", 1)
            mode, _kind, sha = meta.split(b" ")
            entries.append((mode.lstrip(b"0") if mode.startswith(b"04") else mode, name, sha))
    return entries


def dotgit_dir(work) -> bytes:
    hooks = write_tree(work, [(b"100755", b"post-checkout", blob(work, HOOK))])
    return write_tree(
        work, [(b"40000", b"hooks", hooks), (b"100644", b"config", blob(work, b"[core]\n"))]
    )


def hostile_entries(work, case: str) -> tuple[list[tuple[bytes, bytes, bytes]], bool, str]:
    """(extra entries added to v1's tree, whether to sort, expected refusal)."""
    readme = blob(work, b"hello\n")
    cases = {
        ".git-dir": ([(b"40000", b".git", dotgit_dir(work))], True, "is '.git'"),
        ".GIT-dir": ([(b"40000", b".GIT", dotgit_dir(work))], True, "is '.git'"),
        ".git.-dir": ([(b"40000", b".git.", dotgit_dir(work))], True, "is '.git'"),
        "git~1-dir": ([(b"40000", b"git~1", dotgit_dir(work))], True, "is '.git'"),
        ".git-space": ([(b"100644", b".git ", readme)], True, "is '.git'"),
        "hfs-zero-width-joiner": ([(b"40000", ".g\u200cit".encode(), dotgit_dir(work))], True,
                                  "is '.git'"),
        "hfs-byte-order-mark": ([(b"40000", "\ufeff.Git".encode(), dotgit_dir(work))], True,
                                "is '.git'"),
        "gitmodules-dash-url": ([(b"100644", b".gitmodules", blob(work, GITMODULES_DASH_URL))],
                                True, "disallowed url"),
        "gitmodules-dotdot-name": ([(b"100644", b".gitmodules",
                                     blob(work, GITMODULES_DOTDOT_NAME))], True,
                                   "disallowed submodule name"),
        "gitmodules-symlink": ([(b"120000", b".gitmodules", blob(work, b"x"))], True,
                               ".gitmodules is a symbolic link"),
        "bad-mode": ([(b"100666", b"README", readme)], True, "bad file mode"),
        "group-writable-mode": ([(b"100664", b"README", readme)], True, "bad file mode"),
        "zero-padded-mode": ([(b"0100644", b"README", readme)], True, "zero-padded"),
        "duplicate-entries": ([(b"100644", b"README", readme), (b"100644", b"README", readme)],
                              True, "duplicate entry"),
        "symlink-to-etc-passwd": ([(b"120000", b"README", blob(work, b"../../etc/passwd"))], True,
                                  "symbolic link points outside the tree"),
        "symlink-absolute": ([(b"120000", b"README", blob(work, b"/etc/passwd"))], True,
                             "symbolic link points outside the tree"),
        "unsorted": ([(b"100644", b"zz", readme), (b"100644", b"README", readme)], False,
                     "not sorted"),
    }  # fmt: skip
    return cases[case]


CASES = [
    ".git-dir", ".GIT-dir", ".git.-dir", "git~1-dir", ".git-space", "hfs-zero-width-joiner",
    "hfs-byte-order-mark", "gitmodules-dash-url", "gitmodules-dotdot-name", "gitmodules-symlink",
    "bad-mode", "group-writable-mode", "zero-padded-mode", "duplicate-entries",
    "symlink-to-etc-passwd", "symlink-absolute", "unsorted",
]  # fmt: skip


def hostile_version(work, case: str) -> str:
    extra, sort, message = hostile_entries(work, case)
    base = v1_entries(work)
    entries = base + extra if sort else base[:0] + extra + base
    tree = write_tree(work, entries, sort=sort)
    commit = hostile_push_git("commit-tree", tree.decode(), "-p", "HEAD", "-m", case,
                              cwd=work).stdout.strip().decode()  # fmt: skip
    hostile_push_git("tag", "-a", "v2", "-m", "v2", commit, cwd=work)
    hostile_push_git("branch", "-f", "evil", commit, cwd=work)
    return message


@pytest.mark.parametrize("case", CASES)
def test_hostile_tree_in_a_version_refused(hostile_push_site: HostilePushSite, case: str) -> None:
    work = hostile_push_site.clone()
    message = hostile_version(work, case)
    hostile_push_site.push_refused(work, "evil:main", "v2", message=message)


@pytest.mark.parametrize("case", ["gitmodules-dash-url", ".GIT-dir", "symlink-to-etc-passwd"])
def test_hostile_tree_on_a_branch_refused(hostile_push_site: HostilePushSite, case: str) -> None:
    """Not only versions: any pushed object, on any branch, passes the same checks."""
    work = hostile_push_site.clone()
    message = hostile_version(work, case)
    hostile_push_site.push_refused(work, "evil:refs/heads/feature", message=message)


def test_hostile_commit_identity_refused(hostile_push_site: HostilePushSite) -> None:
    work = hostile_push_site.clone()
    tree = hostile_push_git("rev-parse", "HEAD^{tree}", cwd=work).stdout.strip()
    head = hostile_push_git("rev-parse", "HEAD", cwd=work).stdout.strip()
    body = (b"tree " + tree + b"\nparent " + head + b"\nauthor <nobody> 01 +0000\n"
            b"committer A <a@b> 1 +0000\n\nbad ident\n")  # fmt: skip
    commit = hostile_push_git("hash-object", "-w", "--literally", "-t", "commit", "--stdin",
                              cwd=work, stdin=body).stdout.strip().decode()  # fmt: skip
    hostile_push_git("branch", "-f", "evil", commit, cwd=work)
    hostile_push_site.push_refused(work, "evil:main", message="missing name before the email")


def test_good_tree_push_accepted_control(hostile_push_site: HostilePushSite) -> None:
    """The same path with a harmless extra file and an inside symlink is accepted."""
    work = hostile_push_site.clone()
    readme = blob(work, b"hello\n")
    tree = write_tree(work, [*v1_entries(work), (b"100644", b"README", readme),
                             (b"120000", b"link", blob(work, b"README"))])  # fmt: skip
    commit = hostile_push_git("commit-tree", tree.decode(), "-p", "HEAD", "-m", "ok",
                              cwd=work).stdout.strip().decode()  # fmt: skip
    hostile_push_git("tag", "-a", "v2", "-m", "v2", commit, cwd=work)
    hostile_push_git("push", "origin", f"{commit}:refs/heads/main", "v2", cwd=work)
    assert hostile_push_site.repo.latest() == 2
    hostile_push_site.assert_fsck_clean()


@pytest.mark.parametrize(
    ("case", "git_says"),
    [("git~1-dir", "hasDotgit"), ("gitmodules-dash-url", "gitmodulesUrl"),
     ("group-writable-mode", None), ("symlink-to-etc-passwd", None)],
)  # fmt: skip
def test_hostile_tree_refused_on_the_stock_git_receive_path(
    hostile_push_site: HostilePushSite, tmp_path, monkeypatch: pytest.MonkeyPatch, case: str,
    git_says: str | None,
) -> None:  # fmt: skip
    """Stock `git receive-pack` (a push to the repository's path, as over ssh): git's own
    `receive.fsckObjects` (set by `cui create`, not strict) catches some; the installed
    pre-receive hook, reading git's quarantine, catches the rest (100664 modes, symlinks out)."""
    monkeypatch.setenv("GIT_LFS_SKIP_SMUDGE", "1")
    work = tmp_path / "local"
    hostile_push_git("clone", "-q", str(hostile_push_site.repo.path), str(work))
    message = hostile_version(work, case)
    if git_says:
        hostile_push_site.push_refused(work, "evil:main", "v2", message=git_says)
    else:
        stderr = hostile_push_site.push_refused(work, "evil:main", "v2", message=message)
        assert "refused:" in stderr  # our pre-receive hook's answer
