"""HTML pages of the cluster manager: hosts, pools, running VAPs as pictures, update history.

Read-only: the pages have no buttons that change anything (actions stay in `cui`). They live
under `/ui/` in the API's own app and pass through the API's own authentication: the API's
`before_request` checks the bearer token, so on TCP every page needs a valid token and over the
owner-only Unix socket none. Browsers cannot send bearer tokens, so for `/ui/` paths only a
small WSGI wrapper turns HTTP Basic credentials (any user name, the token as password) into
`Authorization: Bearer TOKEN` before the app sees the request; a 401 from a page asks for them
with `WWW-Authenticate: Basic`. What a caller sees is what the API would show them: every VAP
for administrators, their own for users; pools and blacklist violations for administrators only.

Data comes from `ClusterManager` (the same calls as the API) and the state DB's stored VAP
state (dependencies, imports), whose sensitive values are masked before they are ever stored;
pages show no parameter values at all. "Is there a newer version?" is asked of each repository
with a short timeout and remembered for half a minute, so a slow repository cannot stall a page.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    render_template,
)

import webui
from utility.adapters.store import short_name
from utility.core.addresses import PUBLIC
from utility.errors import Forbidden
from utility.service.manager import Caller, ClusterManager
from webui import wants_html

bp = Blueprint(
    "utility_pages",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

PREFIX = "/ui"


@bp.route("/static/base.css")
def base_css() -> Response:
    """The style sheet both UIs share (`webui`)."""
    return webui.base_css()


REALM = 'Basic realm="Collective utility (token as password)", charset="UTF-8"'
CSP = webui.csp(connect=True, form_action="'none'")
LATEST_TTL = 30.0
LATEST_TIMEOUT = 3.0
REFRESH_SECONDS = 5


# -- authentication: the API's token, carried the way browsers can carry it -------------------


class BrowserCredentials:
    """WSGI wrapper: on `/ui/` paths, HTTP Basic (password = API token) becomes a bearer token.

    Nothing else changes: the API's own `before_request` still decides who the caller is.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == PREFIX or path.startswith(PREFIX + "/"):
            scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
            if scheme.lower() == "basic":
                token = basic_password(value)
                if token:
                    environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
                else:
                    environ.pop("HTTP_AUTHORIZATION", None)
        return self.app(environ, start_response)


def basic_password(value: str) -> str | None:
    """The password of an HTTP Basic credential (`base64(user:password)`), or None if malformed."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (password.strip() or None) if colon else None


def init_app(app: Flask) -> Flask:
    """Register the pages under `/ui/` on the cluster manager's API app."""
    app.register_blueprint(bp)
    app.wsgi_app = BrowserCredentials(app.wsgi_app)  # type: ignore[method-assign]
    webui.add_filters(app)
    return app


@bp.after_request
def _page_headers(response: Response) -> Response:
    """Security headers on every page; a failed page as HTML for browsers, asking for the token."""
    if response.status_code >= 400 and response.is_json and wants_html():
        body = response.get_json(silent=True) or {}
        status = response.status_code
        response = Response(
            render_template(
                "error.html",
                title=f"{status}",
                status=status,
                message=str(body.get("error", "error")),
                nav=None,
            ),
            status=status,
            mimetype="text/html",
        )
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = REALM
    webui.secure(response, CSP)
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


def _manager() -> ClusterManager:
    return current_app.config["MANAGER"]  # type: ignore[no-any-return]


def _caller() -> Caller:
    return g.caller  # type: ignore[no-any-return]


def _admin_only(read: Callable[[], Any], empty: Any) -> tuple[Any, bool]:
    """(what `read` returns, True) or (`empty`, False) when the caller is not an administrator."""
    try:
        return read(), True
    except Forbidden:
        return empty, False


# -- versions: is there a newer (or a blacklisted) one? --------------------------------------


_latest: dict[str, tuple[float, int | None]] = {}
_latest_lock = threading.Lock()


def latest_version(url: str) -> int | None:
    """The latest version of the repository at `url`, None if it cannot be asked right now."""
    now = time.monotonic()
    with _latest_lock:
        hit = _latest.get(url)
        if hit and now - hit[0] < LATEST_TTL:
            return hit[1]
    from reposerver.client import open_repository

    try:
        reader = open_repository(url)
        if hasattr(reader, "timeout"):
            reader.timeout = LATEST_TIMEOUT  # a page must not wait the client's default 30 s
        found: int | None = int(reader.latest())
    except Exception:  # noqa: BLE001 - unreachable, unreadable or not a repository: unknown
        found = None
    with _latest_lock:
        _latest[url] = (now, found)
    return found


@dataclass(frozen=True)
class VersionNote:
    """A component's version against its repository: newer ones, blacklisted ones, pinning."""

    running: str | None
    latest: int | None = None
    pinned: str | None = None
    newer: tuple[int, ...] = ()
    blacklisted_newer: tuple[int, ...] = ()
    running_blacklisted: bool = False
    failed: tuple[int, ...] = ()

    @property
    def level(self) -> str:
        """`bad`, `warn`, `ok` or `none`: how the page colours the note."""
        if self.running_blacklisted or (self.newer and self.newer[-1] in self.failed):
            return "bad"
        if self.newer or self.blacklisted_newer:
            return "warn"
        return "ok" if self.latest is not None else "none"

    @property
    def text(self) -> str:
        """The note in a few words."""
        parts = []
        if self.running_blacklisted:
            parts.append(f"v{self.running} is blacklisted")
        if self.newer:
            top = self.newer[-1]
            if top in self.failed:
                parts.append(f"v{top} failed here (not retried)")
            elif self.pinned:
                parts.append(f"v{top} available (pinned to v{self.pinned})")
            else:
                parts.append(f"v{top} available")
        if self.blacklisted_newer:
            parts.append("blacklisted: " + ", ".join(f"v{v}" for v in self.blacklisted_newer))
        if parts:
            return "; ".join(parts)
        if self.latest is not None:
            return "latest" + (f" (pinned to v{self.pinned})" if self.pinned else "")
        return "plain directory" if self.running == "unversioned" else "latest unknown"


def _norm(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len(".git")] if url.endswith(".git") else url


def version_note(
    origin: Mapping[str, Any] | None,
    imports: Sequence[Mapping[str, Any]],
    blacklist: Iterable[tuple[str, str]],
    failed: Iterable[tuple[str, str]],
    latest_of: Callable[[str], int | None],
) -> VersionNote:
    """What a page says about the version of a component whose type came from `origin`."""
    if not origin or not origin.get("url"):
        return VersionNote(running=None)
    url, running = _norm(str(origin["url"])), str(origin.get("version"))
    banned = {v for u, v in blacklist if _norm(u) == url}
    pinned = next(
        (
            str(i.get("requested"))
            for i in imports
            if _norm(str(i.get("url", ""))) == url
            and i.get("pinned")
            and i.get("cvl") == origin.get("cvl")
        ),
        None,
    )
    if not running.isdigit():
        return VersionNote(
            running=running, pinned=pinned, running_blacklisted="all" in banned or running in banned
        )
    latest = latest_of(str(origin["url"]))
    later = range(int(running) + 1, (latest or 0) + 1)
    blocked = "all" in banned
    return VersionNote(
        running=running,
        latest=latest,
        pinned=pinned,
        newer=tuple(v for v in later if not blocked and str(v) not in banned),
        blacklisted_newer=tuple(v for v in later if blocked or str(v) in banned),
        running_blacklisted=blocked or running in banned,
        failed=tuple(int(v) for u, v in failed if _norm(u) == url and v.isdigit()),
    )


# -- the picture of a VAP's network ----------------------------------------------------------

BOX_W, BOX_H, GAP_X, BUS_GAP, MARGIN, ARROW_ROOM = 230, 78, 50, 64, 24, 58
GUTTER = 210
"""Room left of the boxes for the segments' labels."""
LABEL_ROOM = 110
"""Room right of the last box for its interface labels."""


@dataclass(frozen=True)
class Bus:
    """A network segment drawn as a horizontal line."""

    segment: str
    label: tuple[str, ...]
    kind: str  # "public" | "van"
    y: int
    x1: int
    x2: int


@dataclass(frozen=True)
class Box:
    """A component VM drawn as a box."""

    path: str
    type: str
    role: str  # "firewall" | "gateway" | "vm"
    state: str
    host: str
    note: VersionNote
    x: int
    y: int
    w: int = BOX_W
    h: int = BOX_H

    @property
    def cx(self) -> int:
        """Horizontal centre."""
        return self.x + self.w // 2

    @property
    def version_text(self) -> str:
        """The running version as the box shows it."""
        running = self.note.running
        if running is None:
            return "local"
        return f"v{running}" if running.isdigit() else running

    @property
    def summary(self) -> str:
        """The version line of the box: the running version and the one thing to know."""
        note, version = self.note, self.version_text
        if note.running_blacklisted:
            return f"{version} · BLACKLISTED"
        if note.newer:
            top = note.newer[-1]
            if top in note.failed:
                return f"{version} · v{top} failed here"
            return f"{version} · v{top} available" + (" (pinned)" if note.pinned else "")
        if note.blacklisted_newer:
            return f"{version} · newer is blacklisted"
        if note.latest is not None:
            return f"{version} · latest"
        return version


@dataclass(frozen=True)
class Link:
    """An interface: a line from its box to its segment's bus, labelled with name and address."""

    path: str
    name: str
    ip: str
    x: int
    y1: int
    y2: int

    @property
    def label_y(self) -> int:
        """Where the label sits: the middle of the line."""
        return (self.y1 + self.y2) // 2 + 4


@dataclass(frozen=True)
class Arrow:
    """A dependency: `source` starts after `target` (which provides what it requires)."""

    source: str
    target: str
    d: str
    label: str
    label_x: int
    label_y: int


@dataclass(frozen=True)
class Picture:
    """Everything the template draws, already laid out."""

    width: int
    height: int
    buses: tuple[Bus, ...]
    boxes: tuple[Box, ...]
    links: tuple[Link, ...]
    arrows: tuple[Arrow, ...]
    notes: tuple[str, ...] = field(default=())


def _segment_depth(segment: str) -> int:
    if segment == PUBLIC:
        return 0
    return 1 if segment == "" else 1 + len(segment.split("."))


def _subnet(interfaces: Iterable[Mapping[str, Any]]) -> str | None:
    for iface in interfaces:
        try:
            return str(ipaddress.IPv4Network(f"{iface['ip']}/{iface['netmask']}", strict=False))
        except (KeyError, ValueError):
            continue
    return None


def network_picture(
    status: Mapping[str, Any],
    dependencies: Mapping[str, tuple[Sequence[str], Sequence[str]]],
    notes: Mapping[str, VersionNote],
) -> Picture:
    """Lay out a VAP (`ClusterManager.vap_status` shape) as buses, boxes, links and arrows.

    Segments are stacked outside-in (the public network on top, then the VAP's VAN, then
    sub-VANs); each component sits just below the outermost segment it joins, so a firewall
    that joins the public network and the VAN sits between their two lines.

    Args:
        status: the VAP's status (components with interfaces, networks with segments).
        dependencies: component path -> (paths it starts after, services it requires).
        notes: component path -> what is known about its version.
    """
    segment_of_net = {n["name"]: n["segment"] for n in status.get("networks", [])}
    vlan_of = {n["segment"]: n.get("vlan") for n in status.get("networks", [])}
    components = [c for c in status.get("components", []) if c.get("type")]
    members: dict[str, list[Mapping[str, Any]]] = {}
    for comp in components:
        for iface in comp.get("interfaces", []):
            segment = segment_of_net.get(iface.get("network"), iface.get("network", "?"))
            members.setdefault(segment, []).append(iface)
    segments = sorted(members, key=lambda s: (_segment_depth(s), s))
    if not segments:
        segments = [""]
    order = {s: i for i, s in enumerate(segments)}

    def segments_of(comp: Mapping[str, Any]) -> list[str]:
        found = {
            segment_of_net.get(i.get("network"), i.get("network", "?"))
            for i in comp.get("interfaces", [])
        }
        return sorted(found, key=order.__getitem__) or [segments[0]]

    rows: dict[str, list[Mapping[str, Any]]] = {s: [] for s in segments}
    for comp in sorted(components, key=lambda c: str(c["path"])):
        rows[segments_of(comp)[0]].append(comp)
    same_row_arrows = {
        s: any(
            dep in {str(c["path"]) for c in row}
            for c in row
            for dep in dependencies.get(str(c["path"]), ((), ()))[0]
        )
        for s, row in rows.items()
    }
    widest = max([len(r) for r in rows.values()] + [1])
    width = max(2 * MARGIN + GUTTER + LABEL_ROOM + widest * BOX_W + (widest - 1) * GAP_X, 760)

    buses: list[Bus] = []
    boxes: dict[str, Box] = {}
    y = MARGIN + 18
    for segment in segments:
        buses.append(
            Bus(
                segment,
                _bus_label(segment, status, vlan_of, members.get(segment, [])),
                "public" if segment == PUBLIC else "van",
                y,
                MARGIN,
                width - MARGIN,
            )
        )
        row = rows[segment]
        if not row:
            y += 40
            continue
        top = y + BUS_GAP
        total = len(row) * BOX_W + (len(row) - 1) * GAP_X
        x = MARGIN + GUTTER + (width - 2 * MARGIN - GUTTER - LABEL_ROOM - total) // 2
        for comp in row:
            path = str(comp["path"])
            joined = segments_of(comp)
            role = "vm"
            if len(joined) > 1:
                role = "firewall" if joined[0] == PUBLIC else "gateway"
            boxes[path] = Box(
                path,
                str(comp.get("type", "")),
                role,
                str(comp.get("state", "?")),
                str(comp.get("host", "")),
                notes.get(path, VersionNote(running=comp.get("version"))),
                x,
                top,
            )
            x += BOX_W + GAP_X
        y = top + BOX_H + (ARROW_ROOM if same_row_arrows[segment] else 0) + BUS_GAP
    height = y - BUS_GAP + MARGIN + 8

    bus_y = {b.segment: b.y for b in buses}
    links: list[Link] = []
    for comp in components:
        box = boxes[str(comp["path"])]
        ifaces = comp.get("interfaces", [])
        ups = [i for i in ifaces if bus_y[segment_of_net.get(i.get("network"), "?")] < box.y]
        downs = [i for i in ifaces if i not in ups]
        for group, upward in ((ups, True), (downs, False)):
            for k, iface in enumerate(group):
                x = box.x + (k + 1) * box.w // (len(group) + 1)
                target = bus_y[segment_of_net.get(iface.get("network"), "?")]
                links.append(
                    Link(
                        box.path,
                        str(iface.get("name", "")),
                        str(iface.get("ip", "")),
                        x,
                        box.y if upward else box.y + box.h,
                        target,
                    )
                )
    arrows: list[Arrow] = []
    for path, (needs, requires) in sorted(dependencies.items()):
        if path not in boxes:
            continue
        label = "requires " + ", ".join(requires) if requires else "starts after"
        for dep in needs:
            if dep in boxes:
                arrows.append(_arrow(boxes[path], boxes[dep], label))
    return Picture(width, height, tuple(buses), tuple(boxes.values()), tuple(links), tuple(arrows))


def _bus_label(
    segment: str,
    status: Mapping[str, Any],
    vlan_of: Mapping[str, Any],
    interfaces: Sequence[Mapping[str, Any]],
) -> tuple[str, ...]:
    if segment == PUBLIC:
        return ("outside", "public network")
    name = (status.get("appliance") or "VAP") if segment == "" else segment
    parts = []
    vlan = vlan_of.get(segment)
    if vlan is not None:
        parts.append(f"VLAN {vlan}")
    subnet = _subnet(interfaces)
    if subnet:
        parts.append(subnet)
    return (f"VAN {name}", " · ".join(parts))


def _arrow(source: Box, target: Box, label: str) -> Arrow:
    if source.y == target.y:
        y = source.y + source.h
        mid = (source.cx + target.cx) // 2
        depth = ARROW_ROOM - 6
        d = f"M {source.cx} {y} Q {mid} {y + 2 * depth} {target.cx} {y + 4}"
        return Arrow(source.path, target.path, d, label, mid, y + depth + 16)
    if source.y > target.y:
        start, end = (source.cx - 20, source.y), (target.cx + 20, target.y + target.h + 4)
    else:
        start, end = (source.cx - 20, source.y + source.h), (target.cx + 20, target.y - 4)
    d = f"M {start[0]} {start[1]} L {end[0]} {end[1]}"
    return Arrow(
        source.path, target.path, d, label, (start[0] + end[0]) // 2 + 6, (start[1] + end[1]) // 2
    )


# -- views ------------------------------------------------------------------------------------


def _page(template: str, **context: Any) -> Response:
    return Response(
        render_template(template, refresh=REFRESH_SECONDS, **context), mimetype="text/html"
    )


def _when(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _history_rows(
    entries: Sequence[Mapping[str, Any]], ids: Mapping[str, int]
) -> list[dict[str, Any]]:
    rows = []
    for h in reversed(entries):
        result = str(h.get("result", ""))
        level = "ok" if result == "applied" else "bad" if result.startswith("failed") else "warn"
        trigger = str(h.get("trigger", ""))
        rows.append(
            {
                "at": _when(float(h["at"])),
                "vap": str(h["name"]),
                "name": short_name(str(h["name"])),
                "vap_id": ids.get(str(h["name"])),
                "trigger": trigger,
                "automatic": trigger in ("push", "poll"),
                "versions": [
                    (path, old, new)
                    for path, (old, new) in sorted(dict(h.get("versions") or {}).items())
                ],
                "actions": list(h.get("actions") or []),
                "result": result,
                "level": level,
            }
        )
    return rows


@bp.get("")
def bare_prefix() -> Response:
    """`/ui` without the slash: to the overview (Flask's own redirect would become JSON here)."""
    from flask import redirect, url_for

    return redirect(url_for("utility_pages.overview"), code=308)  # type: ignore[return-value]


@bp.get("/")
def overview() -> Response:
    """Hosts with memory and VM slots in use, pools in use, VAPs, recent updates."""
    manager, caller = _manager(), _caller()
    hosts = manager.hosts(caller)
    pools, is_admin = _admin_only(lambda: manager.pools(caller), {"vlans": [], "public_ips": []})
    violations, _ = _admin_only(lambda: manager.violations(caller), [])
    vaps = manager.status(caller)
    ids = manager.vap_ids(caller)
    names = {v["id"]: str(v["name"]) for v in vaps}
    return _page(
        "overview.html",
        title="Cluster",
        nav="overview",
        caller=caller,
        is_admin=is_admin,
        hosts=hosts,
        vlans_used=[v for v in pools["vlans"] if v.get("vap_id") is not None],
        vlans_total=len(pools["vlans"]),
        ips_used=[p for p in pools["public_ips"] if p.get("vap_id") is not None],
        ips_total=len(pools["public_ips"]),
        vap_names=names,
        vaps=vaps,
        violations=violations,
        history=_history_rows(manager.history(caller), ids)[:8],
    )


@bp.get("/vaps/<int:vap_id>")
def vap_page(vap_id: int) -> Response:
    """One VAP: the picture of its network, its components' versions, its updates."""
    manager, caller = _manager(), _caller()
    details = manager.vap_details(caller, vap_id)  # the owner check happens there
    status, state, name = details["status"], details["state"], details["name"]
    imports = list(state.imports) if state else []
    blacklist = [(b["url"], b["version"]) for b in manager.blacklist(caller)]
    failed = details["failed"]
    notes: dict[str, VersionNote] = {}
    dependencies: dict[str, tuple[Sequence[str], Sequence[str]]] = {}
    for vm in state.vms if state else ():
        notes[vm.path] = version_note(vm.origin, imports, blacklist, failed, latest_version)
        dependencies[vm.path] = (vm.needs, vm.requires)
    picture = network_picture(status, dependencies, notes) if status["components"] else None
    events = [{**e, "at": _when(float(str(e["at"])))} for e in details["events"]][-12:]
    return _page(
        "vap.html",
        title=short_name(name),
        nav="overview",
        vap=status,
        picture=picture,
        notes=notes,
        dependencies=dependencies,
        history=_history_rows(manager.history(caller, name), manager.vap_ids(caller)),
        events=list(reversed(events)),
    )


@bp.get("/history")
def history_page() -> Response:
    """Every update the caller may see, newest first: trigger, versions, actions, result."""
    manager, caller = _manager(), _caller()
    return _page(
        "history.html",
        title="Update history",
        nav="history",
        history=_history_rows(manager.history(caller), manager.vap_ids(caller)),
    )


@bp.get("/blacklist")
def blacklist_page() -> Response:
    """The blacklist and the running components that violate it."""
    manager, caller = _manager(), _caller()
    violations, is_admin = _admin_only(lambda: manager.violations(caller), [])
    return _page(
        "blacklist.html",
        title="Blacklist",
        nav="blacklist",
        is_admin=is_admin,
        entries=manager.blacklist(caller),
        violations=violations,
        vap_ids=manager.vap_ids(caller),
    )


@bp.app_template_filter("duration")
def format_duration(seconds: float | None) -> str:
    """An uptime for people: '3 h 05 min', '42 s'."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


__all__ = ["BrowserCredentials", "VersionNote", "init_app", "network_picture", "version_note"]
