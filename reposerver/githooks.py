"""The logic of the git hooks `cui create` installs (the scripts in `hooks/` only call this).

With stock `git receive-pack` (pushes over ssh or to a local path), git runs pre-receive after
the pack is received into a quarantine directory, so the checks read objects through an overlay
of the quarantine and the repository's store; git then writes the refs with its own atomic
transaction (a version tag is only created if absent, so two racing pushes cannot both win).
LFS objects uploaded over HTTP wait in the staging area; an accepted push promotes the ones its
versions reference while the hook still holds the lock, just before git writes the refs.
Pushed CVL is evaluated with the same restricted resolver as over HTTP (`hook_resolver`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dulwich.object_store import DiskObjectStore, OverlayObjectStore

from reposerver.checks import RefUpdate, check_updates, promote_accepted
from reposerver.errors import RepositoryError
from reposerver.receive import announce_refs
from reposerver.repository import Repository
from reposerver.server_resolver import hook_resolver


def parse_updates(lines: Iterable[str]) -> list[RefUpdate]:
    """Parse git's hook input: one `OLD NEW REF` line per updated ref."""
    updates = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            updates.append(RefUpdate(parts[2].encode(), parts[0].encode(), parts[1].encode()))
    return updates


def _objects(repository: Repository, environ: Mapping[str, str]) -> Any:
    quarantine = environ.get("GIT_QUARANTINE_PATH") or environ.get("GIT_OBJECT_DIRECTORY")
    if not quarantine or Path(quarantine).resolve() == (repository.path / "objects").resolve():
        return repository.git.object_store
    return OverlayObjectStore([DiskObjectStore(quarantine), repository.git.object_store])


def pre_receive(
    git_dir: Path, lines: Iterable[str], environ: Mapping[str, str] = os.environ
) -> tuple[int, str]:
    """Check a whole push; return (exit status, message for the pusher)."""
    try:
        repository = Repository(git_dir)
        updates = parse_updates(lines)
        with repository.lock():
            objects = _objects(repository, environ)
            resolver = hook_resolver(repository.path.parent)
            accepted = check_updates(repository, updates, objects, resolver)
            promote_accepted(repository, accepted)
    except RepositoryError as exc:
        return 1, f"refused: {exc}"
    return 0, "".join(f"accepted version v{v.number}\n" for v in accepted)


def post_receive(git_dir: Path, lines: Iterable[str]) -> None:
    """Announce the versions a push created to the repository's subscribers."""
    announce_refs(Repository(git_dir), parse_updates(lines))
