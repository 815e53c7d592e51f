"""Git smart HTTP through dulwich, with our checks inside the receive path.

`RepositoryBackend` maps dulwich's URL prefix (`/NAME.git`) to a repository through
`names.git_repository_name` instead of `FileSystemBackend`'s `os.path.join`, which discards
its root for an absolute prefix. `CheckedReceivePackHandler` replaces dulwich's per-ref
hooks: dulwich runs pre-receive before the pack is unpacked, so our checks run after the pack
is received into a quarantine (`reposerver.quarantine`), over the whole push at once
(all-or-nothing), inside the repository lock together with the ref writes, so concurrent
pushers of the same `vN` cannot both win and a refused push leaves no objects behind. The
same holds for disks: LFS uploads wait in the staging area, and only an accepted push promotes
the objects its versions reference into the store, in the locked section before the refs move.
"""

from __future__ import annotations

import logging
import socket
import zlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from dulwich.errors import (
    ApplyDeltaError,
    ChecksumMismatch,
    NotGitRepository,
    ObjectFormatException,
)
from dulwich.hooks import Hook
from dulwich.objects import ObjectID
from dulwich.protocol import CAPABILITY_FILTER
from dulwich.refs import Ref
from dulwich.server import DEFAULT_HANDLERS, Backend, ReceivePackHandler, UploadPackHandler
from dulwich.web import GunzipFilter, HTTPGitApplication

from reposerver.checks import ZERO, RefUpdate, check_updates, promote_accepted
from reposerver.errors import RepositoryError
from reposerver.names import git_repository_name
from reposerver.quarantine import Quarantine
from reposerver.receive import announce_refs
from reposerver.repository import open_repository
from reposerver.settings import ServerSettings

log = logging.getLogger(__name__)
_UNPACK_ERRORS = (
    OSError,
    ChecksumMismatch,
    ApplyDeltaError,
    AssertionError,
    socket.error,
    zlib.error,
    ObjectFormatException,
)


request_base_url: ContextVar[str | None] = ContextVar("request_base_url", default=None)
"""The server's base URL as the current push request reached it (events name it when the
config has no `public_url`); set by `web.GitDispatcher` in the thread that runs the push."""


def one_line(message: str, limit: int = 900) -> bytes:
    """A refusal message fit for git's `ng REF MESSAGE` status line."""
    text = " | ".join(line.strip() for line in message.splitlines() if line.strip())
    return text[:limit].encode("utf-8", errors="replace")


class AnnounceHook(Hook):
    """dulwich post-receive hook: announce the versions a push created."""

    def __init__(self, repository: Any, settings: ServerSettings) -> None:
        self.repository = repository
        self.settings = settings

    def execute(self, client_refs: list[tuple[bytes, bytes, bytes]]) -> None:  # type: ignore[override]
        updates = [RefUpdate(ref, old, new) for old, new, ref in client_refs]
        try:
            announce_refs(
                self.repository,
                updates,
                self.settings.public_url or request_base_url.get(),
                self.settings.subscribers,
                self.settings.delivery_delays,
            )
        except Exception:  # noqa: BLE001 - announcing must never fail an accepted push
            log.exception("announcing versions of %s failed", self.repository.name)


class RepositoryBackend(Backend):
    """dulwich backend serving the repositories under the server root."""

    def __init__(self, settings: ServerSettings) -> None:
        super().__init__()
        self.settings = settings

    def open_repository(self, path: str | bytes) -> Any:
        """Open `/NAME.git` as a dulwich repo carrying our repository and hooks."""
        if isinstance(path, bytes):
            path = path.decode("utf-8", errors="replace")
        try:
            repository = open_repository(Path(self.settings.root), git_repository_name(path))
        except RepositoryError as exc:
            raise NotGitRepository(str(exc)) from None
        git = repository.git
        git.hooks = {"post-receive": AnnounceHook(repository, self.settings)}
        git.collective = repository  # type: ignore[attr-defined]
        return git


class CheckedReceivePackHandler(ReceivePackHandler):
    """Receive-pack that checks the whole push under the repository lock before any ref moves."""

    def _apply_pack(  # type: ignore[override]
        self, refs: list[tuple[bytes, bytes, bytes]]
    ) -> Iterator[tuple[bytes, bytes]]:
        repository = self.repo.collective  # type: ignore[attr-defined]
        quarantine = None
        try:
            if any(new != ZERO for _, new, _ in refs):
                quarantine = Quarantine(repository.path / "objects")
                try:
                    quarantine.store.add_thin_pack(
                        self.proto.read,
                        getattr(self.proto, "recv", None),
                        max_input_size=self._receive_max_input_size(),
                    )
                except _UNPACK_ERRORS as exc:
                    yield (b"unpack", one_line(str(exc)) or b"unpack failed")
                    return
            yield (b"unpack", b"ok")
            updates = [RefUpdate(ref, old, new) for old, new, ref in refs]
            main = self.repo.object_store
            with repository.lock():
                try:
                    objects = quarantine.overlay(main) if quarantine else main
                    accepted = check_updates(repository, updates, objects=objects)
                    promoted = promote_accepted(repository, accepted)
                    if promoted:
                        log.info(
                            "%s: promoted %d staged LFS object(s): %s",
                            repository.name,
                            len(promoted),
                            " ".join(promoted),
                        )
                except RepositoryError as exc:
                    message = one_line(str(exc))
                    for update in updates:
                        yield (update.ref, message)
                    return
                except Exception as exc:  # noqa: BLE001 - report, never crash the protocol
                    log.exception("checking a push to %s failed", repository.name)
                    for update in updates:
                        yield (update.ref, one_line(f"internal error while checking: {exc}"))
                    return
                if quarantine:
                    quarantine.migrate()
                for update in updates:
                    yield (update.ref, self._write(update))
        finally:
            if quarantine:
                quarantine.discard()

    def _write(self, update: RefUpdate) -> bytes:
        refs = self.repo.refs
        try:
            if update.new == ZERO:
                ok = refs.remove_if_equals(Ref(update.ref), ObjectID(update.old))
            else:
                ok = refs.set_if_equals(Ref(update.ref), ObjectID(update.old), ObjectID(update.new))
        except _UNPACK_ERRORS as exc:
            return one_line(f"failed to write: {exc}")
        return b"ok" if ok else b"failed to update ref (changed meanwhile)"


class UnfilteredUploadPackHandler(UploadPackHandler):
    """upload-pack without the `filter` capability.

    dulwich advertises `filter` but refuses the lazy fetches a partial clone makes afterwards
    (its wants must be advertised refs), so `git clone --filter=blob:none` broke at checkout.
    Not advertising it makes git fall back to a whole clone ("filtering not recognized by
    server, ignoring"), which works; our repositories are small apart from LFS objects, which
    git-lfs fetches lazily anyway.
    """

    def capabilities(self) -> list[bytes]:
        return [c for c in super().capabilities() if c != CAPABILITY_FILTER]

    def set_client_capabilities(self, caps: Iterable[bytes]) -> None:
        # git still sends `filter` after warning that the server ignores it: ignore it here.
        wanted = [c for c in caps if c != CAPABILITY_FILTER and not c.startswith(b"filter=")]
        super().set_client_capabilities(wanted)


def git_application(settings: ServerSettings) -> Any:
    """The dulwich smart-HTTP WSGI application for every repository under the root."""
    handlers: dict[bytes, Any] = dict(DEFAULT_HANDLERS)
    handlers[b"git-receive-pack"] = CheckedReceivePackHandler
    handlers[b"git-upload-pack"] = UnfilteredUploadPackHandler
    return GunzipFilter(HTTPGitApplication(RepositoryBackend(settings), handlers=handlers))
