"""HTML pages of the repository server (work in progress)."""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("repository_pages", __name__, template_folder="templates")


def init_app(app: Flask) -> Flask:
    """Register the repository pages on the server's app; returns the app."""
    app.register_blueprint(bp)
    return app
