"""The Git LFS file-locking API (`git lfs lock|locks|unlock`, and lock verification on push).

Locks are kept per repository in `lfs/locks.json`, rewritten atomically under the repository
lock. Every route needs write credentials except listing, which follows read protection;
a lock belongs to the user who made it, and only they (or `force` by any writer, as git-lfs'
`unlock --force`) remove it. Locks are advisory: they coordinate publishers, pushes are still
checked as always.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request

from reposerver import errors
from reposerver.names import file_path
from reposerver.repository import Repository

LFS_JSON = "application/vnd.git-lfs+json"
MAX_BODY = 64 * 1024
MAX_LOCKS = 10_000

locks_bp = Blueprint("lfs_locks", __name__)


def _file(repo: Repository) -> Path:
    return repo.path / "lfs" / "locks.json"


def read_locks(repo: Repository) -> list[dict[str, Any]]:
    """Every lock of `repo`, oldest first."""
    try:
        data = json.loads(_file(repo).read_text())
    except FileNotFoundError:
        return []
    return list(data["locks"])


def _write(repo: Repository, locks: list[dict[str, Any]]) -> None:
    path = _file(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"locks": locks}))
    os.replace(tmp, path)


def create_lock(repo: Repository, path: str, owner: str) -> tuple[dict[str, Any], bool]:
    """Lock `path` for `owner`; (lock, True) if made, (the existing lock, False) if held."""
    path = file_path(path)
    with repo.lock():
        locks = read_locks(repo)
        held = next((lock for lock in locks if lock["path"] == path), None)
        if held is not None:
            return held, False
        if len(locks) >= MAX_LOCKS:
            raise errors.BadRequest(f"at most {MAX_LOCKS} locks per repository")
        lock = {
            "id": secrets.token_hex(8),
            "path": path,
            "locked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "owner": {"name": owner},
        }
        _write(repo, [*locks, lock])
        return lock, True


def remove_lock(repo: Repository, lock_id: str, user: str, force: bool) -> dict[str, Any]:
    """Remove lock `lock_id`; only its owner may, unless `force`."""
    with repo.lock():
        locks = read_locks(repo)
        lock = next((lock for lock in locks if lock["id"] == lock_id), None)
        if lock is None:
            raise errors.NotFound(f"no lock {lock_id}")
        if lock["owner"]["name"] != user and not force:
            raise errors.Forbidden(
                f"lock {lock_id} belongs to {lock['owner']['name']}; use --force"
            )
        _write(repo, [other for other in locks if other["id"] != lock_id])
        return lock


def _body() -> dict[str, Any]:
    request.max_content_length = MAX_BODY
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise errors.BadRequest("LFS locks: expected a JSON object")
    return body


def _answer(data: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(data)
    response.status_code = status
    response.content_type = LFS_JSON
    return response


def _page(locks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Apply `cursor` (an index) and `limit` from the query or body; return (page, next)."""
    source = request.args if request.method == "GET" else request.get_json(silent=True) or {}
    try:
        start = int(source.get("cursor") or 0)
        limit = int(source.get("limit") or 100)
    except (TypeError, ValueError):
        raise errors.BadRequest("LFS locks: cursor and limit must be integers") from None
    if start < 0 or not 0 < limit <= 1000:
        raise errors.BadRequest("LFS locks: cursor >= 0 and 0 < limit <= 1000")
    page = locks[start : start + limit]
    more = start + limit < len(locks)
    return page, str(start + limit) if more else ""


def _web() -> Any:
    """The transport module's request helpers (imported late: it registers this blueprint)."""
    from reposerver import web

    return web


@locks_bp.post("/<name>.git/info/lfs/locks")
def lock(name: str) -> Response:
    """Create a lock (201), or answer the lock that holds the path (409)."""
    user = _web()._require(write=True)
    repo = _web()._lfs_repository(name)
    path = _body().get("path")
    if not isinstance(path, str):
        raise errors.BadRequest("LFS locks: 'path' must be a string")
    made, new = create_lock(repo, path, str(user))
    if new:
        return _answer({"lock": made}, 201)
    return _answer({"lock": made, "message": f"{made['path']} is already locked"}, 409)


@locks_bp.get("/<name>.git/info/lfs/locks")
def list_locks(name: str) -> Response:
    """List locks, filtered by `path` or `id`, paged by `cursor` and `limit`."""
    repo = _web()._lfs_repository(name)
    locks = read_locks(repo)
    if "path" in request.args:
        locks = [lock for lock in locks if lock["path"] == request.args["path"]]
    if "id" in request.args:
        locks = [lock for lock in locks if lock["id"] == request.args["id"]]
    page, cursor = _page(locks)
    return _answer({"locks": page, "next_cursor": cursor})


@locks_bp.post("/<name>.git/info/lfs/locks/verify")
def verify(name: str) -> Response:
    """The locks git-lfs checks before a push: the pusher's own and everyone else's."""
    user = _web()._require(write=True)
    repo = _web()._lfs_repository(name)
    _body()
    page, cursor = _page(read_locks(repo))
    ours = [lock for lock in page if lock["owner"]["name"] == user]
    theirs = [lock for lock in page if lock["owner"]["name"] != user]
    return _answer({"ours": ours, "theirs": theirs, "next_cursor": cursor})


@locks_bp.post("/<name>.git/info/lfs/locks/<lock_id>/unlock")
def unlock(name: str, lock_id: str) -> Response:
    """Remove a lock: its owner, or anyone with write credentials and `force`."""
    user = _web()._require(write=True)
    repo = _web()._lfs_repository(name)
    force = _body().get("force", False)
    if not isinstance(force, bool):
        raise errors.BadRequest("LFS locks: 'force' must be a boolean")
    return _answer({"lock": remove_lock(repo, lock_id, str(user), force)})
