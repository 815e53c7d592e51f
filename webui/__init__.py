"""What the two web UIs share: security headers, the CSP, content negotiation, filters, base CSS.

The repository server's pages (`reposerver.pages`) and the utility's (`utility.web.pages`) each
serve `static/base.css` from here under their own prefix, set the same headers through
`secure`, and register the same template filters with `add_filters`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from flask import Flask, Response, request, send_from_directory

STATIC = Path(__file__).resolve().parent / "static"


def csp(*, connect: bool, form_action: str) -> str:
    """A Content-Security-Policy allowing no inline script or style and nothing from elsewhere.

    Args:
        connect: allow `fetch` to the page's own origin (the utility's live refresh).
        form_action: "'self'" where pages have forms, "'none'" where they have none.
    """
    return (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        + ("connect-src 'self'; " if connect else "")
        + f"base-uri 'none'; form-action {form_action}; frame-ancestors 'none'"
    )


def secure(response: Response, policy: str) -> Response:
    """Set the headers every page carries: the CSP, no MIME sniffing, same-origin referrers."""
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def wants_html() -> bool:
    """True when the client prefers HTML to JSON (a browser); `*/*` and no header mean JSON."""
    accept = request.accept_mimetypes
    return accept["text/html"] > accept["application/json"]


def base_css() -> Response:
    """The style sheet both UIs' pages share."""
    return send_from_directory(STATIC, "base.css", mimetype="text/css", max_age=300)


def format_bytes(value: int | None) -> str:
    """Bytes for people: 1536 -> '1.5 KiB'."""
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if round(size, 1) < 1024 or unit == "TiB":  # 1023.96 KiB reads "1.0 MiB", not "1024.0"
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def format_time(value: datetime) -> str:
    """A UTC timestamp for people."""
    return value.strftime("%Y-%m-%d %H:%M UTC")


def add_filters(app: Flask) -> None:
    """The shared template filters: `size` and `utc`."""
    app.add_template_filter(format_bytes, "size")
    app.add_template_filter(format_time, "utc")
