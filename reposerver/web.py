"""HTTP transport only: routes, status codes, headers. The work happens in the modules below.

Every name in a URL goes through `reposerver.names` before it reaches a repository; every
`RepositoryError` becomes a 4xx/5xx with a JSON body `{"error": ..., "message": ...}` (the
second key is what git-lfs prints). `GitDispatcher` sends `/NAME.git/...` (except the LFS API)
to dulwich after authentication, dropping `HTTP_TRANSFER_ENCODING` when the server already
de-chunked the body (gunicorn, werkzeug), or dulwich would decode it a second time. A git
request body without Content-Length (chunked) is read first, up to `max_push_bytes`, into a
spooled file: a malformed one is a 400 and a too-large one a 413 before dulwich answers, and
dulwich then reads a body of known length. Only the smart-HTTP paths reach dulwich; any other
path under `/NAME.git/` is a 404.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import posixpath
import re
from collections.abc import Callable, Iterable
from typing import Any

from dulwich.objects import ObjectID
from flask import Blueprint, Flask, Response, current_app, g, jsonify, redirect, request, send_file
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestedRangeNotSatisfiable
from werkzeug.http import parse_range_header
from werkzeug.wrappers import Response as WerkzeugResponse

from reposerver import auth, errors, lfs_locks, repo_config, subscriber_health
from reposerver.egress import check_url
from reposerver.git_http import git_application, request_base_url
from reposerver.names import (
    git_repository_name,
    object_id,
    repository_name,
    request_path,
    version_number,
)
from reposerver.repository import Repository, list_repositories, open_repository
from reposerver.settings import ServerSettings

IMMUTABLE = "public, max-age=31536000, immutable"
log = logging.getLogger(__name__)
LFS_JSON = "application/vnd.git-lfs+json"
MAX_BATCH_BODY = 1 << 20
MAX_SUBSCRIBER_BODY = 64 << 10
_GIT_PATH = re.compile(r"/([^/]*)\.git(/.*)?\Z")
_GIT_SERVICE_PATH = re.compile(r"(/info/refs|/git-upload-pack|/git-receive-pack|/HEAD)?\Z")
_SPOOL_IN_MEMORY = 1 << 20
_STATUS: list[tuple[type[errors.RepositoryError], int]] = [
    (errors.NotFound, 404),
    (errors.PayloadTooLarge, 413),
    (errors.RangeNotSatisfiable, 416),
    (errors.BadRequest, 400),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.IntegrityError, 422),
    (errors.PushRefused, 409),
    (errors.Unreachable, 502),
]

bp = Blueprint("reposerver", __name__)


def status_of(exc: errors.RepositoryError) -> int:
    """The HTTP status for an error of the repository layer."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def settings() -> ServerSettings:
    """The settings of the running app."""
    return current_app.config["COLLECTIVE_SETTINGS"]  # type: ignore[no-any-return]


def _opened(repo: Repository) -> Repository:
    g.setdefault("repositories", []).append(repo)
    return repo


@bp.teardown_app_request
def _close_repositories(_exc: BaseException | None) -> None:
    for repo in g.pop("repositories", []):
        repo.git.close()


def _repository(name: str) -> Repository:
    return _opened(open_repository(settings().root, repository_name(name)))


def _require(write: bool) -> str | None:
    cfg = settings()
    if not write and not cfg.read_protected:
        return None
    user = auth.authenticated_user(request.headers.get("Authorization"), cfg.users)
    if user is None:
        raise errors.Unauthorized("credentials required: HTTP basic with a user and token")
    return user


@bp.before_app_request
def _read_protection() -> None:
    _require(write=False)


def _error_response(status: int, message: str) -> Response:
    response = jsonify({"error": message, "message": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="collective"'
        response.headers["LFS-Authenticate"] = 'Basic realm="collective"'
    if "/info/lfs/" in request.path:
        response.content_type = LFS_JSON
    return response


@bp.app_errorhandler(errors.RepositoryError)
def _repository_error(exc: errors.RepositoryError) -> Response:
    return _error_response(status_of(exc), str(exc))


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    response = _error_response(exc.code or 500, exc.description or exc.name)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    return response


def _revalidated(response: Response) -> Response:
    """A changing JSON answer: a weak ETag of its body (valid under any content coding),
    `no-cache`, and 304 when the client's copy is current."""
    response.set_etag(hashlib.sha256(response.get_data()).hexdigest()[:32], weak=True)
    response.headers["Cache-Control"] = "no-cache"
    response.make_conditional(request)
    return response


COMPRESSIBLE = frozenset({"application/json", "text/html", "text/css", "application/javascript"})


@bp.after_app_request
def _compress(response: Response) -> Response:
    """gzip JSON and HTML answers for clients that accept it (objects are sent as they are)."""
    response.vary.add("Accept-Encoding")
    if (
        response.mimetype not in COMPRESSIBLE
        or response.direct_passthrough
        or response.status_code != 200
        or "Content-Encoding" in response.headers
        or not request.accept_encodings["gzip"]
    ):
        return response
    data = response.get_data()
    if len(data) < 512:
        return response
    response.set_data(gzip.compress(data, compresslevel=6, mtime=0))
    response.headers["Content-Encoding"] = "gzip"
    return response


@bp.get("/")
def index() -> Response:
    """Every repository with its latest version."""
    return _revalidated(
        jsonify(
            [
                {"name": r.name, "latest": r.latest()}
                for r in map(_opened, list_repositories(settings().root))
            ]
        )
    )


@bp.get("/<name>/")
def repository_index(name: str) -> Response:
    """A repository: name, latest, and every version."""
    repo = _repository(name)
    response = jsonify(
        {
            "name": repo.name,
            "latest": repo.latest(),
            "versions": [v.to_json() for v in repo.versions()],
        }
    )
    return _revalidated(response)


def _immutable(response: Response, etag: str) -> Response:
    response.set_etag(etag)
    response.headers["Cache-Control"] = IMMUTABLE
    response.make_conditional(request)
    return response


def _usable_range() -> None:
    """Drop a Range header we will not honour, so the answer is the whole object (200).

    RFC 9110 lets a server ignore Range: unknown units (`items=0-3`) must be ignored, and a
    multi-range request is answered whole rather than as multipart/byteranges.
    """
    header = request.headers.get("Range")
    if header is None:
        return
    parsed = parse_range_header(header)
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        request.environ.pop("HTTP_RANGE", None)  # request.headers is a live view of environ
        request.__dict__.pop("range", None)  # werkzeug's cached parse of the header


def _object_response(repo: Repository, oid: str, download_name: str | None = None) -> Response:
    _usable_range()
    path = repo.store.verified_path(object_id(oid))
    size = path.stat().st_size
    try:
        response = send_file(
            path,
            mimetype="application/octet-stream",
            conditional=True,
            etag=oid,
            max_age=31536000,
            download_name=download_name or oid,
        )
    except RequestedRangeNotSatisfiable:
        response = Response(status=416)
        response.headers["Content-Range"] = f"bytes */{size}"
    response.headers["Cache-Control"] = IMMUTABLE
    return response


_TYPES = {
    ".cvl": "text/plain; charset=utf-8",
    ".xml": "application/xml",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}


def _file_type(name: str) -> str:
    """The media type of a version's file by its extension (octet-stream when unknown)."""
    return _TYPES.get(posixpath.splitext(name)[1].lower(), "application/octet-stream")


@bp.get("/<name>/versions/<version>/<path:file>")
def version_file(name: str, version: str, file: str) -> Response:
    """A file of a version (`tag`: the raw tag object; `disks.json`: the disk chains)."""
    repo = _repository(name)
    number = version_number(version)
    if file == "tag":
        tag = repo.tag(number)
        response = Response(tag.as_raw_string(), mimetype="application/octet-stream")
        return _immutable(response, tag.id.decode())
    if file == "disks.json":
        tag = repo.tag(number)
        response = Response(json.dumps(repo.disks(number), indent=1), mimetype="application/json")
        return _immutable(response, "disks-" + tag.id.decode())
    entry = repo.file(number, file)
    if entry.pointer is not None:
        return _object_response(repo, entry.pointer.oid, posixpath.basename(file))
    response = Response(entry.data, content_type=_file_type(file))
    return _immutable(response, entry.blob_id)


@bp.get("/<name>/latest/<path:file>")
def latest_file(name: str, file: str) -> WerkzeugResponse:
    """Redirect to the same file of the latest version."""
    repo = _repository(name)
    latest = repo.latest()
    if latest == 0:
        raise errors.NotFound(f"{repo.name} has no versions yet")
    if file not in ("tag", "disks.json"):
        repo.file(latest, file)
    response = redirect(f"{request.script_root}/{repo.name}/versions/{latest}/{file}", code=302)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.route("/<name>/objects/sha256/<oid>", methods=["GET", "HEAD"])
def stored_object(name: str, oid: str) -> Response:
    """A content-addressed object, with Range and ETag."""
    return _object_response(_repository(name), oid)


_SHA1 = re.compile(r"[0-9a-f]{40}\Z")


@bp.get("/<name>/git-objects/<sha1>")
def git_object(name: str, sha1: str) -> Response:
    """A git object in its canonical form `TYPE SIZE\\0BODY`, whose SHA-1 is its name.

    With the raw tag (`versions/N/tag`), this lets a client walk tag -> commit -> tree -> blob
    and check every hash itself, trusting nothing the server says about them.
    """
    repo = _repository(name)
    if not _SHA1.match(sha1):
        raise errors.BadRequest(f"{sha1!r} is not a git object id (40 lowercase hex digits)")
    try:
        obj = repo.git.object_store[ObjectID(sha1.encode())]
    except KeyError:
        raise errors.NotFound(f"{repo.name} has no git object {sha1}") from None
    body = obj.as_raw_string()
    raw = obj.type_name + b" " + str(len(body)).encode() + b"\0" + body
    response = Response(raw, mimetype="application/x-git-object")
    return _immutable(response, sha1)


def _subscriber_request(name: str) -> tuple[Repository, str, dict[str, Any]]:
    user = _require(write=True)
    assert user is not None
    repo = _repository(name)
    request.max_content_length = MAX_SUBSCRIBER_BODY
    data = request.get_json(silent=True) if request.method != "GET" else {}
    if not isinstance(data, dict):
        raise errors.BadRequest("expected a JSON object body")
    return repo, user, data


@bp.route("/<name>/subscribers", methods=["GET", "POST", "DELETE"])
def subscribers(name: str) -> Response | tuple[Response, int]:
    """Subscribers of publish events (write credentials required for every method).

    GET lists their URLs and delivery state (`status` active, failing or suspended: see
    `reposerver.subscriber_health`); POST `{"url": U, "secret": S?}` adds or replaces one (and
    lifts a suspension) and answers its HMAC secret (generated when not given) once; DELETE
    `{"url": U}` removes one.
    """
    repo, user, data = _subscriber_request(name)
    health = subscriber_health.health_path(repo.path / "logs")
    if request.method == "GET":
        state = subscriber_health.describe(health)
        return jsonify([{"url": s.url, **state(s.url)} for s in repo.config.subscribers])
    url = data.get("url")
    if not isinstance(url, str):
        raise errors.BadRequest("field 'url' (the subscriber's events URL) is missing")
    with repo.lock():
        if request.method == "DELETE":
            if not repo_config.unsubscribe(repo.path, url):
                raise errors.NotFound(f"{url} is not a subscriber of {repo.name}")
            subscriber_health.clear(health, url)
            current_app.logger.info("%s removed subscriber %s of %s", user, url, repo.name)
            return jsonify({"removed": url})
        secret = data.get("secret")
        if secret is not None and not isinstance(secret, str):
            raise errors.BadRequest("field 'secret' must be a string")
        check_url(url, settings().allowed_subscriber_networks)
        _, value = repo_config.subscribe(repo.path, url, secret)
        subscriber_health.clear(health, url)
    current_app.logger.info("%s subscribed %s to %s", user, url, repo.name)
    answer = {"repository": repo.name, "url": url}
    if secret is None:
        answer["secret"] = value
    response = jsonify(answer)
    response.headers["Cache-Control"] = "no-store"
    return response, 201


def _lfs_repository(name: str) -> Repository:
    return _opened(open_repository(settings().root, git_repository_name(f"/{name}.git")))


def _lfs_objects(body: Any) -> tuple[str, list[tuple[str, int]]]:
    if not isinstance(body, dict) or body.get("operation") not in ("upload", "download"):
        raise errors.BadRequest("LFS batch: expected JSON with operation 'upload' or 'download'")
    items = body.get("objects")
    if not isinstance(items, list) or not 0 < len(items) <= 1000:
        raise errors.BadRequest("LFS batch: 'objects' must be a list of 1 to 1000 objects")
    result = []
    for i, item in enumerate(items):
        size = item.get("size") if isinstance(item, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise errors.BadRequest(f"LFS batch: objects[{i}].size must be a non-negative integer")
        result.append((object_id(str(item.get("oid"))), size))
    return str(body["operation"]), result


@bp.post("/<name>.git/info/lfs/objects/batch")
def lfs_batch(name: str) -> Response:
    """The Git LFS batch API (basic transfer)."""
    repo = _lfs_repository(name)
    request.max_content_length = MAX_BATCH_BODY
    operation, objects = _lfs_objects(request.get_json(silent=True, force=True))
    if operation == "upload":
        _require(write=True)
    base = settings().public_url or request.url_root
    href = f"{base.rstrip('/')}/{repo.name}.git/info/lfs/objects/"
    header = (
        {"Authorization": request.headers["Authorization"]}
        if "Authorization" in request.headers
        else {}
    )
    staging = repo.store.staging()
    answer = []
    for oid, size in objects:
        item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        present = repo.store.has(oid, size)
        if operation == "upload" and not present and staging.has(oid, size):
            staging.touch(oid)  # already uploaded, waiting for its push: do not send it again
            present = True
        if operation == "download":
            if present:
                item["actions"] = {"download": {"href": href + oid, "header": header}}
            else:
                item["error"] = {"code": 404, "message": f"object sha256:{oid} not found"}
        elif size > settings().max_upload_bytes:
            item["error"] = {
                "code": 422,
                "message": f"object larger than {settings().max_upload_bytes} bytes",
            }
        elif not present:
            item["actions"] = {"upload": {"href": href + oid, "header": header}}
        answer.append(item)
    response = jsonify({"transfer": "basic", "objects": answer})
    response.content_type = LFS_JSON
    return response


@bp.put("/<name>.git/info/lfs/objects/<oid>")
def lfs_upload(name: str, oid: str) -> Response:
    """Stage an uploaded LFS object after checking its hash (and size limit).

    The object goes to the staging area, not the store: it becomes downloadable only when a
    push whose version references it is accepted. Staged objects older than the configured
    TTL are pruned here, under the repository lock (so never between a push's check and its
    promotion).
    """
    _require(write=True)
    repo = _lfs_repository(name)
    object_id(oid)
    limit = settings().max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge(f"upload of {request.content_length} bytes exceeds {limit}")
    staging = repo.store.staging()
    staging.put_stream(
        request.stream, expected_oid=oid, expected_size=request.content_length, max_size=limit
    )
    staging.touch(oid)
    with repo.lock():
        pruned = staging.prune(settings().staging_ttl_seconds)
    if pruned:
        log.info("%s: pruned %d stale staged LFS object(s)", repo.name, len(pruned))
    return Response(status=200)


@bp.get("/<name>.git/info/lfs/objects/<oid>")
def lfs_download(name: str, oid: str) -> Response:
    """Download an LFS object (the batch API's download href)."""
    return _object_response(_lfs_repository(name), oid)


class GitDispatcher:
    """WSGI middleware: `/NAME.git/...` to dulwich (after auth), everything else to Flask."""

    def __init__(
        self,
        flask_wsgi: Callable[..., Iterable[bytes]],
        git_wsgi: Callable[..., Iterable[bytes]],
        cfg: ServerSettings,
    ) -> None:
        self.flask_wsgi = flask_wsgi
        self.git_wsgi = git_wsgi
        self.settings = cfg

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        try:
            request_path(path)
        except errors.BadRequest as exc:
            return _plain(start_response, 400, str(exc))
        match = _GIT_PATH.match(path)
        if not match or (match.group(2) or "").startswith("/info/lfs/"):
            return self.flask_wsgi(environ, start_response)
        if not _GIT_SERVICE_PATH.match(match.group(2) or ""):
            return _plain(start_response, 404, f"{path}: not a git smart-HTTP path")
        try:
            name = git_repository_name(f"/{match.group(1)}.git")
            open_repository(self.settings.root, name).git.close()
        except errors.RepositoryError as exc:
            return _plain(start_response, status_of(exc), str(exc))
        write = "git-receive-pack" in path or "service=git-receive-pack" in environ.get(
            "QUERY_STRING", ""
        )
        if write or self.settings.read_protected:
            user = auth.authenticated_user(environ.get("HTTP_AUTHORIZATION"), self.settings.users)
            if user is None:
                return _plain(
                    start_response,
                    401,
                    "credentials required to push: HTTP basic with a user and token",
                    [("WWW-Authenticate", 'Basic realm="collective"')],
                )
        try:
            _buffer_unsized_body(environ, self.settings.max_push_bytes)
        except errors.RepositoryError as exc:
            return _plain(start_response, status_of(exc), str(exc))
        host = environ.get("HTTP_HOST") or "{}:{}".format(
            environ.get("SERVER_NAME"), environ.get("SERVER_PORT")
        )
        request_base_url.set(f"{environ.get('wsgi.url_scheme', 'http')}://{host}")
        return self.git_wsgi(environ, start_response)


def _buffer_unsized_body(environ: dict[str, Any], limit: int) -> None:
    """Replace a body without Content-Length by a spooled copy of known length.

    Raises:
        BadRequest: the chunked encoding is malformed (or the connection broke).
        PayloadTooLarge: the body is larger than `limit`.
    """
    import tempfile

    from dulwich.web import ChunkReader

    chunked = environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
    if environ.get("REQUEST_METHOD") != "POST" or (environ.get("CONTENT_LENGTH") and not chunked):
        return
    if not chunked:  # HTTP/1.1: no length and not chunked means no body; never read the socket
        import io

        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(b""), "0"
        return
    stream = environ["wsgi.input"]
    if chunked and not environ.get("wsgi.input_terminated"):
        stream = ChunkReader(stream)
    spool = tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY, prefix="cv-body-")
    size = 0
    try:
        while block := stream.read(65536):
            size += len(block)
            if size > limit:
                raise errors.PayloadTooLarge(f"request body larger than {limit} bytes")
            spool.write(block)
    except (OSError, ValueError, EOFError) as exc:
        spool.close()
        raise errors.BadRequest(f"malformed request body: {type(exc).__name__}") from None
    except errors.RepositoryError:
        spool.close()
        raise
    spool.seek(0)
    environ["wsgi.input"] = spool
    environ["CONTENT_LENGTH"] = str(size)
    environ.pop("HTTP_TRANSFER_ENCODING", None)


def _plain(
    start_response: Callable[..., Any],
    status: int,
    message: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    from http import HTTPStatus

    body = (message + "\n").encode()
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
    )
    return [body]


def build_app(cfg: ServerSettings) -> Flask:
    """The Flask app with the git dispatcher in front of it."""
    app = Flask("reposerver")
    app.config["COLLECTIVE_SETTINGS"] = cfg
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.register_blueprint(bp)
    app.register_blueprint(lfs_locks.locks_bp)
    app.wsgi_app = GitDispatcher(app.wsgi_app, git_application(cfg), cfg)  # type: ignore[method-assign]
    return app
