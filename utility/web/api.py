"""The cluster manager's HTTP API (Flask app factory); `utility.web.daemon_server` serves it.

Transport only: each route authenticates (who is asking), calls one `ClusterManager` method
(which decides whether they may, `utility.service.policy`), returns JSON. This is the one place
`UtilityError`s (and CVL errors) become HTTP statuses: a refusal is a JSON 401/403/404/409/422,
anything unexpected a logged JSON 500.

Authentication: `Authorization: Bearer TOKEN`; tokens are created with `cui utility token add`
and stored as SHA-256 digests. Over the daemon's Unix socket (directory 0700, socket 0600, so
only its owner can connect) a request without a token acts as the local administrator; on TCP
every request needs a valid token. Tokens are looked up on every request, so a revoked one is
refused from the next request on; no token may be named `local` (the socket's caller) or
`auto-update` (`utility.service.policy.RESERVED_NAMES`).

Progress: `POST /v1/vaps/start`, `/v1/vaps/update`, `/v1/vaps/move`, `/v1/rebalance` and
`/v1/hosts/NAME/drain` with `Accept: application/x-ndjson` answer a stream of JSON lines instead:
`{"progress": {"label", "done", "total"}}` while disk objects download or a live migration
copies (bytes of memory and disks), then `{"result": ...}` or `{"error", "kind", "status",
"problems"?}` (the HTTP status is already 200 by then, so the error's status travels in the
line).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from utility.adapters.event_guard import EventRules, check_size
from utility.core import validation as valid
from utility.core.bundle import Bundle
from utility.errors import CheckFailed, Unauthorized, UtilityError
from utility.service.manager import Caller, ClusterManager, FetchReport
from utility.service.policy import LOCAL
from utility.web.pages import init_app as init_pages

LOCAL_ADMIN = Caller(LOCAL, "admin")
SOCKET_NAME = "utility.sock"


EVENTS_PATH = "/v1/events/publish"
NDJSON = "application/x-ndjson"
PROGRESS_INTERVAL = 0.1
"""Seconds between progress lines of one download (the last one always comes)."""


def create_app(
    manager: ClusterManager,
    *,
    require_token: bool = True,
    events_secret: bytes | None = None,
    events_url: str | None = None,
    event_rules: EventRules | None = None,
) -> Flask:
    """The API application over `manager`.

    Args:
        manager: the cluster manager it serves.
        require_token: True on TCP; False on the owner-only Unix socket.
        events_secret: the global shared secret of publish events (HMAC-SHA256), used for
            repositories without a subscription of their own; None: only subscribed ones.
        events_url: this daemon's publish-events URL as repository servers reach it (the
            default of `cui utility subscribe`); None on the Unix socket.
    """
    from utility.service.autoupdate import AutoUpdater

    app = Flask("utility")
    app.config["MAX_CONTENT_LENGTH"] = valid.MAX_REQUEST_BYTES  # a 413 beyond, never read
    app.config["MANAGER"] = manager
    updater = AutoUpdater(manager)
    app.config["AUTO_UPDATER"] = updater
    app.config["EVENTS_URL"] = events_url

    @app.before_request
    def authenticate() -> None:
        if request.path == EVENTS_PATH:
            return  # authenticated by the event's HMAC signature instead
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthorized("malformed Authorization header: use 'Bearer TOKEN'")
            who = manager.authenticate(token.strip())
            if who is None:
                raise Unauthorized("invalid token")
            g.caller = who
        elif require_token:
            raise Unauthorized("this API needs a bearer token (cui --token or $COLLECTIVE_TOKEN)")
        else:
            g.caller = LOCAL_ADMIN

    def error_answer(exc: Exception) -> tuple[dict[str, Any], int]:
        """The JSON body and HTTP status of any error (the one conversion of this edge)."""
        from cvl.errors import CvlError

        if isinstance(exc, UtilityError):
            body: dict[str, Any] = {"error": str(exc), "kind": type(exc).__name__}
            if isinstance(exc, CheckFailed):
                body["problems"] = exc.problems
            return body, exc.http_status
        if isinstance(exc, HTTPException):
            return {"error": exc.description, "kind": type(exc).__name__}, exc.code or 500
        if isinstance(exc, CvlError):
            text = exc.render() if hasattr(exc, "render") else str(exc)
            return {"error": text, "kind": "CvlError"}, 422
        app.logger.exception("unexpected error")
        return {
            "error": f"internal error: {type(exc).__name__}: {exc}",
            "kind": "InternalError",
        }, 500

    @app.errorhandler(Exception)
    def any_error(exc: Exception) -> Any:
        body, status = error_answer(exc)
        return jsonify(body), status

    def streamed(work: Callable[[FetchReport], Any]) -> Response:
        """Run `work` in a thread and answer NDJSON: progress lines, then one result or error
        line (`{"progress": {...}}`, `{"result": ...}`, `{"error", "kind", "status", ...}`).
        The work finishes even if the client goes away."""
        lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        last: dict[str, float] = {}

        def report(label: str, done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - last.get(label, 0.0) < PROGRESS_INTERVAL:
                return
            last[label] = now
            lines.put({"progress": {"label": label, "done": done, "total": total}})

        def run() -> None:
            try:
                lines.put({"result": work(report)})
            except Exception as exc:  # noqa: BLE001 - converted like the error handlers do
                body, status = error_answer(exc)
                lines.put({**body, "status": status})
            finally:
                lines.put(None)

        threading.Thread(target=run, daemon=True, name="streamed request").start()

        def generate() -> Iterator[str]:
            while (item := lines.get()) is not None:
                yield json.dumps(item) + "\n"

        return Response(generate(), mimetype=NDJSON)

    def wants_stream() -> bool:
        return NDJSON in request.headers.get("Accept", "")

    def caller() -> Caller:
        return g.caller  # type: ignore[no-any-return]

    def body() -> dict[str, Any]:
        try:
            data = request.get_json(silent=True)
        except RecursionError:  # nested deeper than the JSON parser's recursion allows
            data = None
        if not isinstance(data, dict):
            raise UtilityError("request body must be a JSON object")
        return data

    def field(data: dict[str, Any], name: str, kind: type = str) -> Any:
        if kind is int:
            return valid.integer(data, name, 1, 100_000)
        return valid.text(data, name)

    def query(name: str) -> str | None:
        return valid.optional_text(dict(request.args), name)

    @app.get("/v1/whoami")
    def whoami() -> Any:
        return jsonify({"name": caller().name, "role": caller().role})

    @app.get("/v1/hosts")
    def hosts() -> Any:
        return jsonify(manager.hosts(caller()))

    @app.post("/v1/hosts")
    def add_host() -> Any:
        data = body()
        memory, uri = valid.memory(data), field(data, "uri")
        name, max_vms = field(data, "name"), field(data, "max_vms", int)
        underlay = valid.optional_text(data, "underlay", 64)
        valid.check_new_host_uri(uri, [h.uri for h in manager.store.hosts()])
        row = manager.add_host(caller(), name, uri, memory, max_vms, underlay)
        return jsonify(
            {
                "name": row.name,
                "uri": row.uri,
                "memory": row.memory,
                "max_vms": row.max_vms,
                "underlay": row.underlay,
            }
        ), 201

    @app.delete("/v1/hosts/<name>")
    def remove_host(name: str) -> Any:
        manager.remove_host(caller(), valid.clean_text(name, "name"))
        return jsonify({"removed": name})

    @app.post("/v1/hosts/<name>/dead")
    def host_dead(name: str) -> Any:
        return jsonify(manager.host_dead(caller(), valid.clean_text(name, "name")))

    @app.post("/v1/hosts/<name>/drain")
    def drain_host(name: str) -> Any:
        who, host = caller(), valid.clean_text(name, "name")
        if wants_stream():
            return streamed(lambda report: manager.drain(who, host, report))
        return jsonify(manager.drain(who, host))

    @app.post("/v1/hosts/<name>/undrain")
    def undrain_host(name: str) -> Any:
        return jsonify(manager.undrain(caller(), valid.clean_text(name, "name")))

    @app.post("/v1/vaps/move")
    def move() -> Any:
        data = body()
        name, component, host = field(data, "name"), field(data, "component"), field(data, "host")
        who, target = caller(), valid.clean_text(host, "host")
        if wants_stream():
            return streamed(lambda report: manager.move(who, name, component, target, report))
        return jsonify(manager.move(who, name, component, target))

    @app.post("/v1/rebalance")
    def rebalance() -> Any:
        who, dry_run = caller(), valid.boolean(body(), "dry_run")
        if wants_stream():
            return streamed(lambda report: manager.rebalance(who, dry_run, report))
        return jsonify(manager.rebalance(who, dry_run))

    @app.post("/v1/vlans")
    def add_vlans() -> Any:
        return jsonify({"added": manager.add_vlans(caller(), field(body(), "range"))})

    @app.post("/v1/publicips")
    def add_public_ips() -> Any:
        spec = field(body(), "range")
        return jsonify({"added": manager.add_public_ips(caller(), spec)})

    @app.get("/v1/pools")
    def pools() -> Any:
        return jsonify(manager.pools(caller()))

    @app.get("/v1/blacklist")
    def blacklist() -> Any:
        return jsonify(manager.blacklist(caller()))

    @app.post("/v1/blacklist")
    def blacklist_add() -> Any:
        data = body()
        manager.blacklist_add(caller(), field(data, "url"), str(field(data, "version")))
        return jsonify({"blacklisted": data}), 201

    @app.post("/v1/blacklist/remove")
    def blacklist_remove() -> Any:
        data = body()
        manager.blacklist_remove(caller(), field(data, "url"), str(field(data, "version")))
        return jsonify({"removed": data})

    @app.get("/v1/trust")
    def trust() -> Any:
        return jsonify(manager.trust_policy(caller()))

    @app.post("/v1/trust")
    def set_trust() -> Any:
        data = body()
        manager.set_trust(
            caller(), valid.optional_text(data, "url"), valid.boolean(data, "require_signed")
        )
        return jsonify(manager.trust_policy(caller()))

    @app.post("/v1/trust/keys")
    def trust_key() -> Any:
        data = body()
        kind = manager.trust_key(caller(), valid.optional_text(data, "url"), field(data, "key"))
        return jsonify({"trusted": kind}), 201

    @app.get("/v1/blacklist/violations")
    def violations() -> Any:
        return jsonify(manager.violations(caller()))

    def bundle_of(data: dict[str, Any]) -> Bundle:
        if "cvl" in data and "bundle" not in data:
            raise UtilityError(
                "field 'cvl' (a path on the daemon's host) is no longer accepted: send the CVL "
                "as field 'bundle' (cui start FILE.cvl does)"
            )
        return Bundle.from_wire(data.get("bundle"))

    def vap_ref(data: dict[str, Any]) -> str:
        return str(valid.text(data, "name", 200))

    @app.post("/v1/vaps/start")
    def start() -> Any:
        data = body()
        secrets = valid.string_map(data, "secrets")
        who, bundle = caller(), bundle_of(data)
        name = valid.optional_text(data, "name", 200)
        restart = valid.optional_text(data, "restart", 16) or "always"
        if wants_stream():
            return streamed(
                lambda report: manager.start(who, bundle, secrets, report, restart, name=name)
            )
        return jsonify(manager.start(who, bundle, secrets, restart=restart, name=name))

    @app.post("/v1/vaps/stop")
    def stop() -> Any:
        data = body()
        timeout = valid.seconds(data, "timeout")
        component = valid.optional_text(data, "component")
        return jsonify(manager.stop(caller(), vap_ref(data), component, timeout))

    @app.post("/v1/vaps/update")
    def update() -> Any:
        data = body()
        secrets = valid.string_map(data, "secrets")
        who, name, component = caller(), vap_ref(data), valid.optional_text(data, "component")
        bundle = bundle_of(data) if data.get("bundle") is not None else None
        dry_run = valid.boolean(data, "dry_run")
        if wants_stream():
            return streamed(
                lambda report: manager.update(
                    who,
                    name,
                    component,
                    bundle=bundle,
                    dry_run=dry_run,
                    secrets=secrets,
                    progress=report,
                )
            )
        return jsonify(
            manager.update(who, name, component, bundle=bundle, dry_run=dry_run, secrets=secrets)
        )

    @app.get("/v1/vaps/bundle")
    def show() -> Any:
        name = query("name")
        if name is None:
            raise UtilityError("query parameter 'name' is missing")
        return jsonify(manager.show(caller(), name))

    @app.post(EVENTS_PATH)
    def publish_event() -> Any:
        check_size(request.content_length)
        event = manager.accept_event(
            request.get_data(),
            request.headers.get("X-Collective-Signature"),
            events_secret,
            event_rules or EventRules(),
        )
        return jsonify({"scheduled": updater.on_event(event)}), 202

    def repository_auth(data: dict[str, Any]) -> tuple[str, str] | None:
        user, token = data.get("user"), data.get("token")
        if user is None and token is None:
            return None
        if not isinstance(user, str) or not isinstance(token, str):
            raise UtilityError(
                "fields 'user' and 'token' (repository server credentials) must both be strings"
            )
        return valid.clean_text(user, "user"), valid.clean_text(token, "token")

    @app.get("/v1/subscriptions")
    def subscriptions() -> Any:
        return jsonify(manager.subscription_list(caller()))

    @app.post("/v1/subscriptions")
    def subscribe() -> Any:
        data = body()
        target = valid.url(data, "events_url", required=False) or app.config["EVENTS_URL"]
        if not isinstance(target, str):
            raise UtilityError(
                "this daemon listens on a Unix socket that repository servers "
                "cannot reach: give events_url (cui utility subscribe "
                "--events-url http://HOST:PORT/v1/events/publish)"
            )
        return jsonify(
            manager.subscribe(
                caller(), str(valid.url(data, "repository")), target, repository_auth(data)
            )
        ), 201

    @app.post("/v1/subscriptions/remove")
    def unsubscribe() -> Any:
        data = body()
        return jsonify(
            manager.unsubscribe(caller(), field(data, "repository"), repository_auth(data))
        )

    @app.get("/v1/history")
    def history() -> Any:
        return jsonify(manager.history(caller(), query("name")))

    @app.get("/v1/vaps")
    def status() -> Any:
        return jsonify(manager.status(caller(), query("name")))

    @app.get("/v1/reconcile")
    def reconcile_report() -> Any:
        return jsonify({"unowned": manager.unowned_domains(caller())})

    @app.post("/v1/tokens")
    def add_token() -> Any:
        data = body()
        role = valid.optional_text(data, "role") or "user"
        if role not in ("admin", "user"):
            raise UtilityError("role must be 'admin' or 'user'")
        name = field(data, "name")
        token = manager.add_token(caller(), name, role)
        return jsonify({"name": name, "role": role, "token": token}), 201

    @app.get("/v1/tokens")
    def tokens() -> Any:
        return jsonify(manager.tokens(caller()))

    @app.delete("/v1/tokens/<name>")
    def revoke_token(name: str) -> Any:
        name = valid.clean_text(name, "name")
        manager.revoke_token(caller(), name)
        return jsonify({"revoked": name})

    init_pages(app)
    return app
