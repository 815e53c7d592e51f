"""Repository pages through Flask's test client, over real repositories published with qemu-img.

What a browser gets (HTML) and what tools get (the unchanged JSON) at the same URLs; escaping of
publisher-controlled text; sensitive defaults never shown; the CVL tokenizer, masking and diff
as properties over arbitrary input.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reposerver import create_app
from reposerver.auth import token_digest
from reposerver.pages import (
    MASK,
    ParamRow,
    cvl_diff,
    highlight,
    mask_sensitive,
    param_diff,
)
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import sample_appliance, write_pattern

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
SECRET = "hunter2-do-not-show"
V1 = f"""CVL = "0.8";
/* A web server whose title holds markup */
Web extends VMAppliance {{
  var "required" domain;
  var "sensitive" adminpw;
  var title, port;
  title = "<script>window.pwned = 1;</script>";
  port = "80";
  adminpw = "{SECRET}";
  vm = "web.xml";
  datadisks = {{ device => "vdb", size => "100mb" }};
  provides = "HTTP";
}}
"""
V2 = V1.replace('port = "80"', 'port = "8080"').replace(
    "var title, port;", 'var title, port;\n  var "required" email;'
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository root: `Web` with two versions (port and disk changed), `Empty` with none."""
    base = tmp_path_factory.mktemp("pages")
    root = base / "repos"
    repo = Repository.create(root / "Web")
    src = base / "src"
    cvl = sample_appliance(src, "Web", size="8M", fill_bytes="1M")
    cvl.write_text(V1)
    publish(repo.path, cvl)
    cvl.write_text(V2)
    write_pattern(src / "root.qcow2", 0x42, "2M", "64k")
    publish(repo.path, cvl)
    Repository.create(root / "Empty")
    return root


@pytest.fixture
def client(root: Path) -> Any:
    return create_app({"root": str(root)}).test_client()


def text_of(html: str) -> str:
    """The page's text roughly as a reader sees it (tags dropped, entities decoded)."""
    import html as html_module

    return html_module.unescape(re.sub(r"<[^>]+>", "", html))


def test_tools_still_get_the_json_they_got_before(client: Any) -> None:
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        index = client.get("/", headers=headers)
        assert index.is_json and index.get_json() == [
            {"name": "Empty", "latest": 0},
            {"name": "Web", "latest": 2},
        ]
        assert "Accept" in index.headers["Vary"]
        repo = client.get("/Web/", headers=headers)
        assert repo.is_json and [v["number"] for v in repo.get_json()["versions"]] == [1, 2]


def test_browsers_get_html_with_a_strict_content_security_policy(client: Any) -> None:
    for url in ("/", "/Web/", "/Web/?version=1", "/Web/diff/1/2", "/Empty/"):
        page = client.get(url, headers=BROWSER)
        assert page.status_code == 200, url
        assert page.mimetype == "text/html"
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "Accept" in page.headers["Vary"]
    assert client.get("/-/static/base.css").status_code == 200


def test_index_lists_latest_version_and_signature_state(client: Any) -> None:
    page = text_of(client.get("/", headers=BROWSER).get_data(as_text=True))
    assert re.search(r"Web\s*v2\s*\d{4}-\d\d-\d\d \d\d:\d\d UTC\s*unsigned", page)
    assert re.search(r"Empty\s*no versions yet", page)


def test_repository_page_shows_the_chosen_versions_cvl_and_parameters(client: Any) -> None:
    latest = text_of(client.get("/Web/", headers=BROWSER).get_data(as_text=True))
    assert 'port = "8080";' in latest and "Web v2 latest" in " ".join(latest.split())
    first = text_of(client.get("/Web/?version=1", headers=BROWSER).get_data(as_text=True))
    assert 'port = "80";' in first and "8080" not in first.split("Parameters")[0]
    params = first.split("Parameters of")[1].split("Program disks")[0]
    assert re.search(r"domain\s*required\s*you set it", params)
    assert re.search(r"adminpw\s*sensitive\s*\(sensitive: not shown\)", params)
    assert re.search(r'port\s*"80"', params)
    assert re.search(r'vm\s*required\s*"web.xml"', params)
    assert "git clone http://localhost/Web.git" in first
    assert 'url => "http://localhost/Web",' in first and 'version => "1",' in first


def test_publisher_markup_is_escaped_and_sensitive_values_never_shown(client: Any) -> None:
    for url in ("/Web/", "/Web/?version=1", "/Web/diff/1/2"):
        html = client.get(url, headers=BROWSER).get_data(as_text=True)
        assert "<script>window" not in html
        assert SECRET not in html
    assert "&lt;script&gt;window.pwned" in client.get("/Web/", headers=BROWSER).get_data(
        as_text=True
    )
    assert SECRET not in json.dumps(client.get("/Web/diff/1/2").get_json())


def test_disks_show_virtual_size_and_what_each_version_added(client: Any) -> None:
    def disk_cells(version: int) -> list[str]:
        html = client.get(f"/Web/?version={version}", headers=BROWSER).get_data(as_text=True)
        row = html.split('<table class="list disks">')[1].split("</tbody>")[0]
        return [text_of(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]

    first, second = disk_cells(1), disk_cells(2)
    assert first[0] == "qcow2" and first[1] == "8.0 MiB"
    assert first[2] == first[3]  # v1 added its whole (single-object) chain
    assert second[1] == "8.0 MiB"
    size = {"KiB": 1 << 10, "MiB": 1 << 20}

    def parse(text: str) -> float:
        number, unit = text.split()
        return float(number) * size.get(unit, 1)

    assert parse(second[3]) < parse(second[2])  # only the overlay is new in v2
    assert parse(second[3]) < 200 * 1024  # 64 KiB written, 4 KiB clusters


def test_diff_shows_the_changed_and_the_added_parameter(client: Any) -> None:
    answer = client.get("/Web/diff/1/2").get_json()
    changes = {c["name"]: c for c in answer["parameters"]}
    assert set(changes) == {"email", "port"}
    assert changes["port"]["change"] == "changed"
    assert (changes["port"]["from"]["default"], changes["port"]["to"]["default"]) == (
        '"80"',
        '"8080"',
    )
    assert changes["email"] == {
        "name": "email",
        "change": "added",
        "from": None,
        "to": {"required": True, "sensitive": False, "default": None},
    }
    kinds = {(d["kind"], d["text"].strip()) for d in answer["cvl"]}
    assert ("del", 'port = "80";') in kinds and ("add", 'port = "8080";') in kinds
    html = text_of(client.get("/Web/diff/1/2", headers=BROWSER).get_data(as_text=True))
    assert re.search(r'port\s*changed default changed\s*"80"\s*"8080"', html)
    assert client.get("/Web/diff?from=1&to=2").status_code == 303


def test_errors_are_pages_for_browsers_and_json_for_tools(client: Any) -> None:
    page = client.get("/Nope/", headers=BROWSER)
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "no repository named" in page.get_data(as_text=True)
    assert client.get("/Web/?version=7", headers=BROWSER).status_code == 404
    assert client.get("/Web/?version=x", headers=BROWSER).status_code == 400
    tool = client.get("/Web/diff/1/9")
    assert tool.status_code == 404 and "version 9 does not exist" in tool.get_json()["error"]


def test_read_protected_pages_ask_the_browser_for_credentials(root: Path) -> None:
    token = "page-token"
    app = create_app(
        {
            "root": str(root),
            "read_protected": True,
            "users": {"reader": {"token_sha256": token_digest(token)}},
        }
    )
    client = app.test_client()
    refused = client.get("/Web/", headers=BROWSER)
    assert refused.status_code == 401 and "Basic" in refused.headers["WWW-Authenticate"]
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(f"reader:{token}".encode()).decode()}
    assert client.get("/Web/", headers={**BROWSER, **auth}).status_code == 200


# -- the pieces, over arbitrary input -------------------------------------------------------

cvl_like = st.lists(
    st.sampled_from(list('abcXY_09 \n\t{}=>;,."\\/*<>&') + ["import", "var", "extends"]),
    max_size=80,
).map("".join)


@given(st.one_of(cvl_like, st.text(max_size=200)))
def test_highlighting_keeps_every_character(text: str) -> None:
    lines = highlight(text)
    rebuilt = "\n".join("".join(piece for _, piece in line) for line in lines)
    assert rebuilt == text.removesuffix("\n") or rebuilt + "\n" == text


def test_highlighting_uses_the_grammars_token_types() -> None:
    [line] = highlight('import { url => "x" } DNS; // done')
    kinds = {piece: kind for kind, piece in line}
    assert kinds["import"] == "kw" and kinds['"x"'] == "str" and kinds["DNS"] == "name"
    assert kinds["// done"] == "com" and kinds["=>"] == "punct"
    assert ("err", "@") in highlight("a @ b")[0]


@given(st.one_of(cvl_like, st.text(max_size=200)))
def test_masking_without_sensitive_names_changes_nothing(text: str) -> None:
    assert mask_sensitive(text, frozenset()) == text
    if "zzz" not in text:
        assert mask_sensitive(text, frozenset({"zzz"})) == text


def test_masking_hides_literals_assigned_to_sensitive_names_only() -> None:
    text = 'X { rootpw = "a", "b"; l.rootpw = "c"; other = "d"; m = { k => "e" }; }'
    masked = mask_sensitive(text, frozenset({"rootpw"}))
    assert '"a"' not in masked and '"b"' not in masked and '"c"' not in masked
    assert '"d"' in masked and '"e"' in masked and masked.count(MASK) == 3


@given(
    st.lists(st.sampled_from(["a", "b", "c", "d", ""]), max_size=30),
    st.lists(st.sampled_from(["a", "b", "c", "e", ""]), max_size=30),
)
def test_diff_with_full_context_rebuilds_both_sides(old: list[str], new: list[str]) -> None:
    lines = cvl_diff("\n".join(old), "\n".join(new), context=10**6)
    a = [d.text for d in lines if d.kind in ("same", "del")]
    b = [d.text for d in lines if d.kind in ("same", "add")]
    if lines:
        assert a == "\n".join(old).splitlines() and b == "\n".join(new).splitlines()
    else:
        assert "\n".join(old).splitlines() == "\n".join(new).splitlines()


def test_parameter_diff_reports_flags_and_defaults() -> None:
    def row(
        name: str,
        required: bool = False,
        sensitive: bool = False,
        default: str | None = None,
        where: str = "x",
    ) -> ParamRow:
        return ParamRow(name, required, sensitive, default, where)

    old = [row("a", default='"1"'), row("b"), row("c", required=True), row("moved")]
    new = [row("a", default='"2"'), row("c", required=False), row("d"), row("moved", where="y")]
    changes = {c.name: c for c in param_diff(old, new)}
    assert {n: c.kind for n, c in changes.items()} == {
        "a": "changed",
        "b": "removed",
        "c": "changed",
        "d": "added",
    }
    assert changes["a"].details() == ["default changed"]
    assert changes["c"].details() == ["no longer required"]
    [secret] = param_diff(
        [row("p", sensitive=True, default='"x"')], [row("p", sensitive=True, default='"y"')]
    )
    assert secret.new is not None and secret.new.shown() == "(sensitive: not shown)"


def test_imports_of_this_servers_own_repositories_are_read_from_disk(
    root: Path, tmp_path: Path
) -> None:
    """No HTTP to itself: the test client's host (http://localhost) has no server behind it."""
    from reposerver.client import read_cvl

    class Local:
        def fetch(
            self, url: str, cvl: str, version: str | None, base_dir: str | None
        ) -> tuple[str, str]:
            assert url == "http://localhost/Web"
            return read_cvl(root / "Web", cvl, version)

    own = tmp_path / "own"
    own.mkdir()
    (own / "Web").symlink_to(root / "Web")
    derived = Repository.create(own / "Shop")
    source = tmp_path / "Shop.cvl"
    source.write_text(
        'import { url => "http://localhost/Web", cvl => "Web.cvl" } Web;\n'
        'Shop extends Web { port = "81"; }\n'
    )
    publish(derived.path, source, resolver=Local())
    client = create_app({"root": str(own)}).test_client()
    page = text_of(client.get("/Shop/", headers=BROWSER).get_data(as_text=True))
    params = " ".join(page.split("Parameters of")[1].split())
    assert 'port "81" Web (Web.cvl:6)' in params
    assert "email required you set it Web (Web.cvl:7)" in params


def test_a_signature_by_an_untrusted_key_is_shown_as_not_verified(tmp_path: Path) -> None:
    import subprocess

    root = tmp_path / "repos"
    repo = Repository.create(root / "Signed")
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cvl = sample_appliance(tmp_path / "src", "Web", size="4M", fill_bytes="64k")
    publish(repo.path, cvl, sign=str(key))
    client = create_app({"root": str(root)}).test_client()
    page = " ".join(text_of(client.get("/Signed/", headers=BROWSER).get_data(as_text=True)).split())
    assert (
        "✘ signature not verified tag is SSH-signed but the repository trusts no SSH keys" in page
    )
    assert "✔ verified" not in page
    index = " ".join(text_of(client.get("/", headers=BROWSER).get_data(as_text=True)).split())
    assert "Signed v1" in index and "signature not verified" in index
