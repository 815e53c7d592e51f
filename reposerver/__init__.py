"""Appliance repositories: git-backed immutable versions, content-addressed disks, HTTP server.

`create_app(config=None)` is the application factory, so production runs
`gunicorn 'reposerver:create_app()'` with the configuration from the environment (see
`reposerver.settings`); `cui serve ROOT` runs the same app for development.
"""

from __future__ import annotations

from typing import Any


def create_app(config: dict[str, Any] | None = None) -> Any:
    """Build the WSGI application serving every repository under the configured root."""
    from reposerver.pages import init_app as init_pages
    from reposerver.settings import load_settings
    from reposerver.web import build_app

    return init_pages(build_app(load_settings(config)))
