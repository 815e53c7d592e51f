"""HTML pages of the cluster manager (work in progress)."""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("utility_pages", __name__, template_folder="templates")


def init_app(app: Flask) -> Flask:
    """Register the utility pages on the cluster manager's app."""
    app.register_blueprint(bp)
    return app
