"""Both web UIs share one module (`webui`): the same base style sheet, headers and filters.

Also the repository's content negotiation, now a request hook rather than a replaced view: the
JSON answer stays byte-for-byte the endpoint's own, and read protection still runs first.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

import webui
from reposerver import create_app as repository_app
from reposerver.auth import token_digest
from utility.service.manager import ClusterManager
from utility.web.api import create_app as utility_app

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
SHARED = ("X-Content-Type-Options", "Referrer-Policy")


def test_both_uis_serve_the_one_base_style_sheet_with_the_same_headers(tmp_path: Path) -> None:
    (tmp_path / "repos").mkdir()
    repo = repository_app({"root": str(tmp_path / "repos")}).test_client()
    manager = ClusterManager(tmp_path / "state", default_uri="test:///default")
    try:
        util = utility_app(manager, require_token=False).test_client()
        css = (webui.STATIC / "base.css").read_bytes()
        assert repo.get("/-/static/base.css").data == css == util.get("/ui/static/base.css").data
        repo_page, util_page = repo.get("/", headers=BROWSER), util.get("/ui/", headers=BROWSER)
        assert repo_page.mimetype == util_page.mimetype == "text/html"
        for header in SHARED:
            assert repo_page.headers[header] == util_page.headers[header]
        for page in (repo_page, util_page):
            csp = page.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    finally:
        manager.close()


def test_negotiated_urls_keep_their_json_and_say_vary_accept(tmp_path: Path) -> None:
    client = repository_app({"root": str(tmp_path)}).test_client()
    for accept in ("application/json", "*/*", None):
        answer = client.get("/", headers={"Accept": accept} if accept else {})
        assert answer.is_json and answer.get_json() == [] and "Accept" in answer.headers["Vary"]
    page = client.get("/", headers=BROWSER)
    assert page.mimetype == "text/html" and "Accept" in page.headers["Vary"]


def test_read_protection_runs_before_the_page(tmp_path: Path) -> None:
    users = {"pub": {"token_sha256": token_digest("secret-token")}}
    client = repository_app(
        {"root": str(tmp_path), "users": users, "read_protected": True}
    ).test_client()
    refused = client.get("/", headers=BROWSER)
    assert refused.status_code == 401 and b"<html" not in refused.data.lower()


@given(st.integers(min_value=0, max_value=1 << 50))
@example(1048525)  # 1023.95 KiB once rendered as "1024.0 KiB"
@example((1 << 30) - 1)
def test_sizes_read_back_within_a_tenth_of_their_unit(value: int) -> None:
    number, unit = webui.format_bytes(value).split()
    scale = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[unit]
    assert abs(float(number) * scale - value) <= 0.05 * scale + 0.5
    assert unit == "TiB" or float(number) < 1024
