"""Which git objects a push brings, read raw (never parsed by dulwich before they are checked).

The pushed objects are every object in the push's quarantine (git's receive-pack and our HTTP
receive both check through an `OverlayObjectStore([quarantine, repository])`), so junk that no
ref names is checked too and can never make `git fsck --strict` of the repository fail; plus
every object reachable from the new ref values that no existing ref reaches (this covers
`cui publish`, which writes its objects straight into the repository).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from dulwich.object_store import OverlayObjectStore

from reposerver import fsck
from reposerver.errors import BadGitObject

Raw = tuple[bytes, int, bytes]


def raw(objects: Any, sha: bytes) -> tuple[int, bytes] | None:
    """(type number, body) of object `sha` in `objects`, None when absent."""
    try:
        kind, body = objects.get_raw(sha)
    except (KeyError, ValueError):
        return None
    return int(kind), bytes(body)


def _links(sha: bytes, kind: int, body: bytes) -> list[bytes]:
    """The object ids an object names (gitlinks name commits of other repositories: skipped)."""
    if kind == fsck.TREE:
        return [e for mode, _, e in fsck.tree_entries(sha, body) if mode != fsck.GITLINK_MODE]
    if kind in (fsck.COMMIT, fsck.TAG):
        head = body.split(b"\n\n", 1)[0]
        wanted = (b"tree ", b"parent ", b"object ")
        return [line.split(b" ", 1)[1] for line in head.split(b"\n") if line.startswith(wanted)]
    return []


def reachable(objects: Any, tips: Iterable[bytes], stop: set[bytes]) -> Iterator[Raw]:
    """Every object reachable from `tips` and not in `stop` (which it extends), raw."""
    todo = [t for t in tips if t not in stop]
    while todo:
        sha = todo.pop()
        if sha in stop:
            continue
        stop.add(sha)
        found = raw(objects, sha)
        if found is None:
            raise BadGitObject(f"git object {sha.decode(errors='replace')} is missing")
        kind, body = found
        yield sha, kind, body
        todo.extend(link for link in _links(sha, kind, body) if link not in stop)


def quarantined(objects: Any, main: Any) -> Iterator[Raw]:
    """Every object in the push's quarantine (the first store of an overlay), raw."""
    if not isinstance(objects, OverlayObjectStore) or objects.bases[0] is main:
        return
    store = objects.bases[0]
    for sha in store:
        found = raw(store, sha)
        if found is not None:
            yield sha, found[0], found[1]


def pushed(
    objects: Any, main: Any, existing: Iterable[bytes], tips: Iterable[bytes]
) -> Iterator[Raw]:
    """The objects of a push: quarantined ones, then new reachable ones (each once)."""
    seen: set[bytes] = set()
    for item in quarantined(objects, main):
        seen.add(item[0])
        yield item
    known: set[bytes] = set()
    for _item in reachable(main, existing, known):
        pass  # `reachable` collects what the existing refs reach into `known`
    yield from reachable(objects, tips, known | seen)
