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

Pushed CVL is evaluated with `server_resolver` (own repositories in-process, allow-listed
origins only), and each accepted version's evaluation is recorded (`version_record`) for the
pages. Request bodies go through dulwich's `LimitedInputFilter` (never read past
Content-Length, which hangs a WSGI server that hands over the raw socket, like werkzeug's;
bodies without one, and gunzipped bodies, capped at `max_push_bytes`).
"""

from __future__ import annotations

import logging
import socket
import sys
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
from dulwich.web import GunzipFilter, HTTPGitApplication, LimitedInputFilter

from reposerver.checks import ZERO, RefUpdate, check_updates, promote_accepted
from reposerver.errors import RepositoryError
from reposerver.names import git_repository_name
from reposerver.quarantine import Quarantine
from reposerver.receive import announce_refs
from reposerver.repository import Repository, open_repository
from reposerver.server_resolver import server_resolver
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
"""The server's base URL as the current push request reached it (an import by this URL reads
the repository in-process; events name it only when its host is in `trusted_hosts`); set by
`web.GitDispatcher` in the thread that runs the push."""


def announce_base(settings: ServerSettings, request_base: str | None) -> str | None:
    """The base URL events may name: the configured `public_url`, else the request's base URL
    when its host is one the administrator trusts (`trusted_hosts`: `host` for any port, or
    `host:port`), else None (the pusher's Host header must not redirect subscribers)."""
    if settings.public_url:
        return settings.public_url
    if request_base:
        from urllib.parse import urlsplit

        parts = urlsplit(request_base)
        if {parts.netloc.lower(), (parts.hostname or "")} & set(settings.trusted_hosts):
            return request_base
    return None


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
        base = announce_base(self.settings, request_base_url.get())
        if base is None:
            log.warning(
                "%s: not announcing: no public_url configured and the request's host is not "
                "in trusted_hosts",
                self.repository.name,
            )
            return
        try:
            announce_refs(
                self.repository,
                updates,
                base,
                self.settings.subscribers,
                self.settings.delivery_delays,
                self.settings.allowed_subscriber_networks,
                self.settings.subscriber_suspend_after_seconds,
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
            settings = self.backend.settings  # type: ignore[attr-defined]
            resolver = server_resolver(settings, request_base_url.get())
            with repository.lock():
                try:
                    objects = quarantine.overlay(main) if quarantine else main
                    accepted = check_updates(repository, updates, objects, resolver)
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
                results = [(update.ref, self._write(update)) for update in updates]
                _record(repository, [v.number for v in accepted], resolver)
                yield from results
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


def _record(repository: Repository, numbers: list[int], resolver: Any) -> None:
    """Write the version records the pages show (see `version_record`); a failure is logged,
    never fails the accepted push (a version without a record is evaluated offline)."""
    from reposerver.pages import record_version

    for number in numbers:
        try:
            record_version(repository, number, resolver)
        except Exception:  # noqa: BLE001 - the refs are written; the push has succeeded
            log.exception("%s: could not record v%d for the pages", repository.name, number)


class MalformedRequestGuard:
    """WSGI middleware: a git request dulwich cannot parse is a 400, never a 5xx.

    dulwich reads the request body while producing the response, so a malformed body raises
    mid-iteration. If nothing was written yet, the status is replaced by 400 (the WSGI
    `exc_info` protocol); if the answer had started, it ends there (git sees a broken stream).
    Either way the exception is logged with its traceback for the administrator.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        wrote = False

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            write = start_response(status, headers, exc_info)

            def tracked(data: bytes) -> Any:
                nonlocal wrote
                wrote = wrote or bool(data)
                return write(data)

            return tracked

        result: Any = ()
        try:
            result = self.app(environ, start)
            for chunk in result:
                wrote = wrote or bool(chunk)
                yield chunk
        except Exception:  # noqa: BLE001 - any failure on hostile input is the input's fault
            log.warning("malformed git request %s", environ.get("PATH_INFO"), exc_info=True)
            if not wrote:
                body = b"malformed git request\n"
                headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
                start_response("400 Bad Request", headers, sys.exc_info())
                yield body
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def git_application(settings: ServerSettings) -> Any:
    """The dulwich smart-HTTP WSGI application for every repository under the root.

    The outer `LimitedInputFilter` caps the raw body at its Content-Length (or at
    `max_push_bytes` without one); the inner one caps what gunzip makes of it.
    """
    handlers: dict[bytes, Any] = dict(DEFAULT_HANDLERS)
    handlers[b"git-receive-pack"] = CheckedReceivePackHandler
    handlers[b"git-upload-pack"] = UnfilteredUploadPackHandler
    app = HTTPGitApplication(RepositoryBackend(settings), handlers=handlers)
    limit = settings.max_push_bytes
    limited = LimitedInputFilter(GunzipFilter(LimitedInputFilter(app, limit)), limit)
    return MalformedRequestGuard(limited)
