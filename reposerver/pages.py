"""HTML pages of the repository server, for publishers and users who look rather than query.

The pages live in the same app as the JSON API and answer at the same URLs: `GET /` and
`GET /NAME/` return HTML when the client prefers `text/html` (browsers do), JSON otherwise, so
`requests`, `curl` and `reposerver.client` see exactly what they saw before (both answers say
`Vary: Accept`). `GET /NAME/?version=N` shows version N instead of the latest;
`GET /NAME/diff/A/B` compares two versions (HTML for browsers, JSON otherwise). Repository names
cannot start with `-`, so the style sheet and script under `/-/static/` never shadow one.

Everything shown is read through the existing layers: versions, files and disk chains from
`Repository` (objects hash-checked on read), signature verdicts from `Repository.signature`
(our own check against the repository's trusted keys, never the tag's say-so), declared
parameters from the CVL evaluator. Templates autoescape; a sensitive parameter's value is never
rendered; every page carries a Content-Security-Policy that allows no inline script or style.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, render_template, request
from lark import Lark

import webui
from reposerver import errors, version_record
from reposerver.disks import read_header
from reposerver.names import repository_name, version_number
from reposerver.repository import Repository, list_repositories, open_repository
from webui import wants_html

bp = Blueprint(
    "repository_pages",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/-/static",
)

CSP = webui.csp(connect=False, form_action="'self'")
REQUIRED_PLACEHOLDER = "REQUIREDxVALUExSETxBYxTHExUSER"
"""Stands in for a required parameter while a published definition is evaluated; alphanumeric,
so it survives map encoding and any value derived from it can be recognised."""
MASK = "********"
PENDING = "(assigned by the utility at start)"
EVALUATION_TTL = 60.0

_TOKEN_CLASS = {
    "IMPORT": "kw",
    "VAR": "kw",
    "EXTENDS": "kw",
    "STRING": "str",
    "COMMENT": "com",
    "LINE_COMMENT": "com",
    "ITEM": "name",
}


# -- content negotiation --------------------------------------------------------------------


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(render_template(template, **context), status=status, mimetype="text/html")
    webui.secure(response, CSP)
    response.headers["Cache-Control"] = "no-cache"
    response.vary.add("Accept")
    return response


def _error_page(exc: errors.RepositoryError) -> Response:
    from reposerver.web import status_of

    status = status_of(exc)
    response = _page("error.html", status=status, status_code=status, message=str(exc))
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="collective"'
    return response


def _html_for_browsers() -> Response | None:
    """For a browser, the page of a JSON endpoint that has one (None: the endpoint answers).

    Registered after the server's own request hooks, so read protection has already run.
    """
    html_view = NEGOTIATED.get(request.endpoint or "")
    if html_view is None or not wants_html():
        return None
    try:
        return html_view(**(request.view_args or {}))
    except errors.RepositoryError as exc:
        return _error_page(exc)


def _vary_on_accept(response: Response) -> Response:
    """Both answers of a negotiated URL say that they depend on `Accept`."""
    if request.endpoint in NEGOTIATED:
        response.vary.add("Accept")
    return response


def init_app(app: Flask) -> Flask:
    """Register the pages on the server's app (HTML beside the JSON of `/` and `/NAME/`)."""
    app.register_blueprint(bp)
    app.before_request(_html_for_browsers)
    app.after_request(_vary_on_accept)
    webui.add_filters(app)
    return app


@bp.get("/-/static/base.css")
def base_css() -> Response:
    """The style sheet both UIs share (`webui`)."""
    return webui.base_css()


@bp.errorhandler(errors.RepositoryError)
def _diff_error(exc: errors.RepositoryError) -> Any:
    if wants_html():
        return _error_page(exc)
    from reposerver.web import status_of

    response = jsonify({"error": str(exc), "message": str(exc)})
    response.status_code = status_of(exc)
    return response


# -- what the pages read --------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRow:
    """One version as the pages show it: when, and whose signature we verified (if any)."""

    number: int
    date: datetime
    signed: bool
    signer: str | None
    problem: str | None
    message: str

    @property
    def verified(self) -> bool:
        """True only when our own check found a trusted key's valid signature."""
        return self.signer is not None


@dataclass(frozen=True)
class ParamRow:
    """A parameter the appliance declares, with its default as the evaluator computed it."""

    name: str
    required: bool
    sensitive: bool
    default: str | None
    where: str

    def shown(self) -> str:
        """The default as a page may show it: never a sensitive value."""
        if self.sensitive and self.default is not None:
            return "(sensitive: not shown)"
        return self.default if self.default is not None else ""


@dataclass(frozen=True)
class ComponentRow:
    """A component of the appliance: path, type, kind and where its type came from."""

    path: str
    type: str
    kind: str
    origin: str


@dataclass(frozen=True)
class Declaration:
    """What evaluating a version's CVL found: appliance name, parameters, components, errors."""

    appliance: str | None
    params: tuple[ParamRow, ...]
    components: tuple[ComponentRow, ...]
    errors: tuple[str, ...]
    sensitive: frozenset[str] = frozenset()
    """Names declared sensitive anywhere in the appliance (their literals are masked)."""


@dataclass(frozen=True)
class DiskRow:
    """A program disk of a version: virtual size, stored chain, and what this version added."""

    name: str
    format: str
    virtual_size: int | None
    chain_length: int
    stored_bytes: int
    added_bytes: int
    sha256: str


@dataclass(frozen=True)
class DiffLine:
    """One line of a unified CVL diff: kind is `same`, `add`, `del` or `gap`."""

    kind: str
    old: int | None
    new: int | None
    text: str


@dataclass(frozen=True)
class ParamChange:
    """How one declared parameter differs between two versions."""

    name: str
    kind: str  # "added" | "removed" | "changed"
    old: ParamRow | None
    new: ParamRow | None

    def details(self) -> list[str]:
        """What changed, in words (values only when neither side is sensitive)."""
        old, new = self.old, self.new
        if old is None or new is None:
            return []
        found = []
        if old.required != new.required:
            found.append("now required" if new.required else "no longer required")
        if old.sensitive != new.sensitive:
            found.append("now sensitive" if new.sensitive else "no longer sensitive")
        if old.default != new.default:
            found.append("default changed")
        return found


def version_row(repo: Repository, number: int) -> VersionRow:
    """One version with our verdict on its signature."""
    tag = repo.tag(number)
    status = repo.signature(number)
    return VersionRow(
        number=number,
        date=datetime.fromtimestamp(tag.tag_time, UTC),
        signed=status.signed,
        signer=status.signer,
        problem=status.problem,
        message=tag.message.decode("utf-8", errors="replace").strip(),
    )


def version_rows(repo: Repository) -> list[VersionRow]:
    """Every version, newest first, with our verdict on its signature."""
    return [version_row(repo, n) for n in sorted(repo.version_tags(), reverse=True)]


def cvl_file(repo: Repository, number: int) -> tuple[str, str]:
    """(name, text) of the one top-level `.cvl` file of version `number`."""
    names = sorted(n for n in repo.files(number) if "/" not in n and n.endswith(".cvl"))
    if not names:
        raise errors.NotFound(f"{repo.name}: version {number} has no CVL file")
    data = repo.file(number, names[0]).data
    return names[0], data.decode("utf-8", errors="replace")


@cache
def _lexer() -> Lark:
    import cvl.syntax

    return Lark.open("cvl.lark", rel_to=cvl.syntax.__file__, parser="lalr", lexer="basic")


@cache
def _token_pattern() -> re.Pattern[str]:
    """One regular expression with a named group per terminal of the CVL grammar.

    Literal terminals come first, longest first (`=>` before `=`), keywords only as whole words
    (so `imports` is a name); then the grammar's regular terminals; any other character is an
    error token, so every input is covered in one linear pass and nothing can fail.
    """
    terminals = _lexer().terminals
    literals = sorted(
        (t for t in terminals if t.pattern.type == "str"), key=lambda t: -len(t.pattern.value)
    )
    parts = []
    for terminal in literals:
        text = re.escape(terminal.pattern.value)
        if terminal.pattern.value[-1:].isalnum():
            text += r"(?![A-Za-z0-9_])"
        parts.append(f"(?P<{terminal.name}>{text})")
    parts += [f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in terminals if t.pattern.type == "re"]
    parts.append("(?P<ERROR>.)")
    return re.compile("|".join(parts), re.DOTALL)


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    """(css class, text) covering `text` exactly, from the CVL grammar's own terminals."""
    for match in _token_pattern().finditer(text):
        name = match.lastgroup or "ERROR"
        if name == "ERROR":
            kind = "err"
        elif name.startswith("__IGNORE"):
            kind = "ws"
        else:
            kind = _TOKEN_CLASS.get(name, "punct")
        yield kind, match.group()


def mask_sensitive(text: str, sensitive: frozenset[str]) -> str:
    """`text` with every string assigned to a parameter named in `sensitive` replaced by MASK.

    A publisher should not put a secret in a published CVL file, but if one does, the pages do
    not repeat it (the target's last name decides, so `l.rootpw = "..."` is masked too).
    """
    if not sensitive:
        return text
    out: list[str] = []
    target: list[str] = []
    masking = False
    for kind, piece in _tokens(text):
        if kind == "str" and masking:
            out.append(f'"{MASK}"')
            continue
        out.append(piece)
        if kind in ("ws", "com"):
            continue
        if kind == "name" and not masking:
            target = [piece] if not target or target[-1] != "." else [*target, piece]
        elif piece == "." and target:
            target.append(".")
        elif piece == "=" and target:
            masking = target[-1] in sensitive
            target = []
        elif piece == ";":
            masking, target = False, []
        elif not masking:
            target = []
    return "".join(out)


def highlight(text: str) -> list[list[tuple[str, str]]]:
    """The CVL text as lines of (css class, text) pieces, for a template to escape and wrap."""
    lines: list[list[tuple[str, str]]] = [[]]
    for kind, piece in _tokens(text):
        parts = piece.split("\n")
        for i, part in enumerate(parts):
            if i:
                lines.append([])
            if part:
                lines[-1].append((kind, part))
    if lines and not lines[-1] and text.endswith("\n"):
        lines.pop()
    return lines


def _show(values: Sequence[str]) -> str:
    if any(REQUIRED_PLACEHOLDER in v for v in values):
        return "(from a required parameter)"
    return ", ".join(f'"{v}"' for v in values)


_evaluations: dict[tuple[str, str, str], tuple[float, Declaration]] = {}
_evaluations_lock = threading.Lock()


def declaration(repo: Repository, number: int) -> Declaration:
    """What version `number`'s CVL declares, as its accepted push recorded it.

    A page viewer never makes the server fetch anything: the push evaluated the CVL once under
    its restricted resolver and wrote `version_record`. A version without a record (published
    before records existed, or by `cui publish` on the server's disk) is evaluated here with
    imports of this server's own repositories only, read in-process, no network; kept a minute.
    """
    tag_id = repo.tag(number).id.decode()
    record = version_record.read(repo.path, number)
    if record is not None and record.get("tag") == tag_id:
        found = declaration_from_record(record.get("declaration"))
        if found is not None:
            return found
    name, text = cvl_file(repo, number)
    key = (str(repo.path), tag_id, name)
    now = time.monotonic()
    with _evaluations_lock:
        hit = _evaluations.get(key)
        if hit and now - hit[0] < EVALUATION_TTL:
            return hit[1]
    result = evaluate_version(repo, number, _page_resolver())
    with _evaluations_lock:
        _evaluations[key] = (now, result)
    return result


def evaluate_version(repo: Repository, number: int, resolver: Any) -> Declaration:
    """Evaluate version `number`'s CVL as a definition (required parameters left to the user);
    errors located in imported files never quote their text."""
    name, text = cvl_file(repo, number)
    return _evaluate(text, name, resolver)


def record_version(repo: Repository, number: int, resolver: Any) -> None:
    """Evaluate version `number` once and write its record (the accepted push calls this)."""
    found = evaluate_version(repo, number, resolver)
    record = {
        "version": number,
        "tag": repo.tag(number).id.decode(),
        "declaration": declaration_to_record(found),
    }
    version_record.write(repo.path, number, record)


def declaration_to_record(found: Declaration) -> dict[str, Any]:
    """A Declaration as JSON data."""
    return {
        "appliance": found.appliance,
        "params": [dataclasses.asdict(p) for p in found.params],
        "components": [dataclasses.asdict(c) for c in found.components],
        "errors": list(found.errors),
        "sensitive": sorted(found.sensitive),
    }


def declaration_from_record(data: Any) -> Declaration | None:
    """The Declaration a record holds, or None when it is not one (then it is re-evaluated)."""
    try:
        return Declaration(
            data["appliance"],
            tuple(ParamRow(**p) for p in data["params"]),
            tuple(ComponentRow(**c) for c in data["components"]),
            tuple(str(e) for e in data["errors"]),
            frozenset(str(n) for n in data["sensitive"]),
        )
    except (KeyError, TypeError):
        return None


def _page_resolver() -> Any:
    """Own repositories only, read in-process: a page view never fetches."""
    from reposerver.server_resolver import server_resolver
    from reposerver.web import settings

    return server_resolver(settings(), base_url(), network=False)


def _evaluate(text: str, filename: str, resolver: Any) -> Declaration:
    import cvl
    from cvl.errors import CvlMissingError

    placeholders: dict[str, str] = {}
    analysis = cvl.analyse_text(text, filename, resolver=resolver)
    for _ in range(3):
        missing = [e for e in analysis.errors if isinstance(e, CvlMissingError) and e.path]
        if analysis.model is not None or not missing or len(missing) != len(analysis.errors):
            break
        placeholders.update({e.path: REQUIRED_PLACEHOLDER for e in missing})
        analysis = cvl.analyse_text(text, filename, resolver=resolver, overrides=placeholders)
    model = analysis.model
    if model is None:
        from reposerver.validate import render_error

        shown = tuple(render_error(e, filename, False) for e in analysis.errors)
        return Declaration(None, (), (), shown)
    root = model.root
    params = []
    for pname, declared in sorted(root.declared.items()):
        value = root.param(pname)
        default = None
        if value is not None and pname not in placeholders:
            default = _show(value)
        elif value is None and pname in root.pending:
            default = PENDING
        params.append(
            ParamRow(
                pname,
                declared.required,
                declared.sensitive,
                default,
                f"{declared.owner} ({declared.file.rpartition('/')[2]}:{declared.line})",
            )
        )
    components = tuple(
        ComponentRow(
            c.path or "(root)",
            c.type,
            c.kind,
            f"{c.origin.url} v{c.origin.version}" if c.origin else "defined here",
        )
        for c in model.walk()
        if c.kind != "interface"
    )
    sensitive = frozenset(n for c in model.walk() for n in c.sensitive)
    return Declaration(model.appliance, tuple(params), components, (), sensitive)


def disk_rows(repo: Repository, number: int) -> list[DiskRow]:
    """Program disks of version `number`; `added_bytes` counts objects no earlier version had."""
    earlier: set[str] = set()
    for previous in sorted(repo.version_tags()):
        if previous >= number:
            break
        for disk in repo.disks(previous):
            earlier.update(str(link["sha256"]) for link in disk["chain"])  # type: ignore[attr-defined]
    rows = []
    for disk in repo.disks(number):
        chain: list[dict[str, Any]] = disk["chain"]  # type: ignore[assignment]
        top = str(disk["sha256"])
        header = read_header(repo.store.verified_path(top))
        rows.append(
            DiskRow(
                name=str(disk["name"]),
                format=str(disk["format"]),
                virtual_size=header.virtual_size,
                chain_length=len(chain),
                stored_bytes=sum(int(link["size"]) for link in chain),
                added_bytes=sum(
                    int(link["size"]) for link in chain if link["sha256"] not in earlier
                ),
                sha256=top,
            )
        )
    return rows


def cvl_diff(old: str, new: str, context: int = 3) -> list[DiffLine]:
    """A unified diff of two CVL texts as numbered lines, hunks separated by `gap` lines."""
    a, b = old.splitlines(), new.splitlines()
    lines: list[DiffLine] = []
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(context):
        if lines:
            lines.append(DiffLine("gap", None, None, "…"))
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                lines += [
                    DiffLine("same", i1 + k + 1, j1 + k + 1, a[i1 + k]) for k in range(i2 - i1)
                ]
                continue
            lines += [DiffLine("del", i + 1, None, a[i]) for i in range(i1, i2)]
            lines += [DiffLine("add", None, j + 1, b[j]) for j in range(j1, j2)]
    return lines


def param_diff(old: Sequence[ParamRow], new: Sequence[ParamRow]) -> list[ParamChange]:
    """Declared parameters added, removed, or changed (flags or default) from `old` to `new`."""
    before = {p.name: p for p in old}
    after = {p.name: p for p in new}
    changes = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a is None:
            changes.append(ParamChange(name, "added", None, b))
        elif b is None:
            changes.append(ParamChange(name, "removed", a, None))
        elif a != b and (a.required, a.sensitive, a.default) != (
            b.required,
            b.sensitive,
            b.default,
        ):
            changes.append(ParamChange(name, "changed", a, b))
    return changes


def _param_json(row: ParamRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "required": row.required,
        "sensitive": row.sensitive,
        "default": None if row.sensitive else row.default,
    }


def base_url() -> str:
    """This server's public base URL (configured `public_url`, else the request's host)."""
    from reposerver.web import settings

    return (settings().public_url or request.host_url).rstrip("/")


def import_snippet(url: str, cvl_name: str, appliance: str, version: int | None) -> str:
    """The CVL `import` block for this repository, pinned to `version` or tracking the latest."""
    lines = ["import {", f'    url => "{url}",', f'    cvl => "{cvl_name}",']
    if version is not None:
        lines.append(f'    version => "{version}",')
    lines.append(f"}} {appliance};")
    return "\n".join(lines)


# -- views ----------------------------------------------------------------------------------


def _root() -> Any:
    from reposerver.web import settings

    return settings().root


def index_page() -> Response:
    """Every repository: name, latest version, its date, and whether its signature verified."""
    entries = []
    for repo in list_repositories(_root()):
        try:
            latest = repo.latest()
            row = version_row(repo, latest) if latest else None
            entries.append({"name": repo.name, "latest": latest, "row": row})
        finally:
            repo.git.close()
    return _page("repo_index.html", entries=entries, title="Appliance repositories")


def repository_page(name: str) -> Response:
    """A repository: versions, the chosen version's CVL, parameters, disks and snippets."""
    repo = open_repository(_root(), repository_name(name))
    try:
        versions = version_rows(repo)
        if not versions:
            return _page("repository.html", repo=repo.name, versions=[], title=repo.name)
        wanted = request.args.get("version")
        number = version_number(wanted) if wanted else versions[0].number
        current = next((v for v in versions if v.number == number), None)
        if current is None:
            raise errors.NotFound(f"{repo.name}: version {number} does not exist")
        cvl_name, text = cvl_file(repo, number)
        declared = declaration(repo, number)
        url = f"{base_url()}/{repo.name}"
        appliance = declared.appliance or cvl_name.removesuffix(".cvl")
        previous = next((v.number for v in versions if v.number < number), None)
        return _page(
            "repository.html",
            title=f"{repo.name} v{number}",
            repo=repo.name,
            versions=versions,
            current=current,
            latest=versions[0].number,
            previous=previous,
            cvl_name=cvl_name,
            cvl_lines=highlight(mask_sensitive(text, declared.sensitive)),
            declared=declared,
            disks=disk_rows(repo, number),
            clone=f"git clone {url}.git",
            import_pinned=import_snippet(url, cvl_name, appliance, number),
            import_latest=import_snippet(url, cvl_name, appliance, None),
        )
    finally:
        repo.git.close()


@bp.get("/<name>/diff")
def diff_choice(name: str) -> Any:
    """The compare form's target: redirect to `/NAME/diff/FROM/TO`."""
    from flask import redirect

    old = version_number(request.args.get("from", ""))
    new = version_number(request.args.get("to", ""))
    return redirect(f"/{repository_name(name)}/diff/{old}/{new}", code=303)


@bp.get("/<name>/diff/<old>/<new>")
def diff_page(name: str, old: str, new: str) -> Response:
    """What changed between two versions: the CVL text and the declared parameters."""
    repo = open_repository(_root(), repository_name(name))
    try:
        a, b = version_number(old), version_number(new)
        a_name, a_text = cvl_file(repo, a)
        b_name, b_text = cvl_file(repo, b)
        a_decl, b_decl = declaration(repo, a), declaration(repo, b)
        lines = cvl_diff(
            mask_sensitive(a_text, a_decl.sensitive | b_decl.sensitive),
            mask_sensitive(b_text, a_decl.sensitive | b_decl.sensitive),
        )
        params = param_diff(a_decl.params, b_decl.params)
        if not wants_html():
            response = jsonify(
                {
                    "repository": repo.name,
                    "from": a,
                    "to": b,
                    "cvl": [
                        {"kind": d.kind, "old": d.old, "new": d.new, "text": d.text} for d in lines
                    ],
                    "parameters": [
                        {
                            "name": c.name,
                            "change": c.kind,
                            "from": _param_json(c.old),
                            "to": _param_json(c.new),
                        }
                        for c in params
                    ],
                }
            )
            response.vary.add("Accept")
            return response
        return _page(
            "diff.html",
            title=f"{repo.name}: v{a} → v{b}",
            repo=repo.name,
            old=a,
            new=b,
            old_name=a_name,
            new_name=b_name,
            lines=lines,
            params=params,
            errors=a_decl.errors + b_decl.errors,
            versions=[v.number for v in version_rows(repo)],
        )
    finally:
        repo.git.close()


NEGOTIATED: dict[str, Callable[..., Response]] = {
    "reposerver.index": index_page,
    "reposerver.repository_index": repository_page,
}
"""JSON endpoints of `reposerver.web` that answer browsers with a page instead."""
