"""Utility pages through Flask's test client over a cluster manager with `test:` driver hosts.

Authentication is the API's (token as HTTP Basic password on TCP, none on the Unix socket);
users see only their own VAPs and no pools; pages are read-only and never show a sensitive value;
the network picture and version notes as pure functions.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import REPO_ROOT
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.service.manager import Caller, ClusterManager
from utility.web.api import create_app
from utility.web.pages import basic_password, network_picture, version_note

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
ADMIN = Caller("root", "admin")
SECRET = "s3cret-rootpw-value"


def basic(token: str, user: str = "someone") -> dict[str, str]:
    return {
        **BROWSER,
        "Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode(),
    }


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ClusterManager]:
    """AcmeGroupware (d, l, f) running on simulated hosts; OpenLDAP has a sensitive rootpw."""
    manager = ClusterManager(tmp_path / "state")
    manager.add_host(ADMIN, "h1", simulated_host_uri(tmp_path, "h1"), 1 << 30, 8)
    manager.add_vlans(ADMIN, "100-103")
    manager.add_public_ips(ADMIN, "192.0.2.1-192.0.2.4")
    acme = paper_tree(REPO_ROOT / "examples" / "paper", tmp_path / "acme")
    ldap = acme.parent / "OpenLDAP" / "OpenLDAP.cvl"
    ldap.write_text(
        ldap.read_text().replace(
            "var port, sport;", 'var port, sport;\n    var "sensitive" rootpw;'
        )
    )
    manager.start(ADMIN, str(acme), secrets={"l.rootpw": SECRET})
    manager.store.add_history(
        "root/AcmeGroupware", "push", ["~ d: new version 1 -> 2"], {"d": ["1", "2"]}, "applied"
    )
    manager.store.add_token("alice", "admin", "tok-admin")
    manager.store.add_token("bob", "user", "tok-user")
    yield manager
    manager.close()


PAGES = ("/ui/", "/ui/vaps/1", "/ui/history", "/ui/blacklist")


def test_tcp_pages_need_the_api_token_as_basic_password(manager: ClusterManager) -> None:
    client = create_app(manager, require_token=True).test_client()
    for url in PAGES:
        refused = client.get(url, headers=BROWSER)
        assert refused.status_code == 401 and refused.mimetype == "text/html"
        assert refused.headers["WWW-Authenticate"].startswith("Basic ")
        assert client.get(url, headers=basic("wrong")).status_code == 401
        page = client.get(url, headers=basic("tok-admin"))
        assert page.status_code == 200, url
        assert "unsafe-inline" not in page.headers["Content-Security-Policy"]
    bearer = {**BROWSER, "Authorization": "Bearer tok-admin"}
    assert client.get("/ui/", headers=bearer).status_code == 200
    # Basic is translated on /ui/ only: the JSON API keeps its own scheme.
    assert client.get("/v1/hosts", headers=basic("tok-admin")).status_code == 401


def test_unix_socket_pages_act_as_the_local_administrator(manager: ClusterManager) -> None:
    client = create_app(manager, require_token=False).test_client()
    html = client.get("/ui/").get_data(as_text=True)
    assert "Signed in as <strong>local</strong>" in html
    # the shared base style sheet (kept with the repository pages) and the utility's additions
    for sheet, marker in (("/ui/static/base.css", "--accent"), ("/ui/static/utility.css", "meter")):
        assert f'href="{sheet}"' in html
        answer = client.get(sheet)
        assert answer.status_code == 200 and answer.mimetype == "text/css"
        assert marker in answer.get_data(as_text=True)


def test_pages_are_read_only_and_never_show_a_sensitive_value(manager: ClusterManager) -> None:
    client = create_app(manager, require_token=True).test_client()
    for url in PAGES:
        html = client.get(url, headers=basic("tok-admin")).get_data(as_text=True)
        assert "<form" not in html and "<button" not in html and 'method="post"' not in html
        assert SECRET not in html


def test_overview_shows_hosts_pools_vaps_and_history(manager: ClusterManager) -> None:
    client = create_app(manager, require_token=True).test_client()
    html = client.get("/ui/", headers=basic("tok-admin")).get_data(as_text=True)
    assert re.search(r'<meter min="0" max="1073741824"[^>]* value="201326592"', html)
    assert re.search(r'<meter min="0" max="8"[^>]* value="3"', html)
    assert "192.0.2.1" in html and "f.ethernet1" in html
    assert ">100</th>" in html and "1 of 4 in the pool" in html
    assert "AcmeGroupware</a>" in html
    assert "automatic" in html and "d</code> v1 → v2" in html


def test_users_see_their_own_vaps_and_no_pools(manager: ClusterManager) -> None:
    client = create_app(manager, require_token=True).test_client()
    html = client.get("/ui/", headers=basic("tok-user")).get_data(as_text=True)
    assert "Only administrators see the pools" in html and "192.0.2.1" not in html
    assert "AcmeGroupware" not in html
    hidden = client.get("/ui/vaps/1", headers=basic("tok-user"))
    missing = client.get("/ui/vaps/99", headers=basic("tok-admin"))
    assert hidden.status_code == missing.status_code == 404
    text = hidden.get_data(as_text=True)
    assert "no VAP with id 1" in text and "AcmeGroupware" not in text and "another" not in text


def test_vap_page_draws_the_three_components_with_their_addresses(
    manager: ClusterManager,
) -> None:
    client = create_app(manager, require_token=True).test_client()
    html = client.get("/ui/vaps/1", headers=basic("tok-admin")).get_data(as_text=True)
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    status = manager.status(ADMIN)[0]
    for component in status["components"]:
        assert f'data-path="{component["path"]}"' in svg
        for iface in component["interfaces"]:
            assert f'<tspan class="ip">{iface["ip"]}</tspan>' in svg
    assert 'class="comp role-firewall' in svg and 'data-path="f"' in svg
    assert 'data-from="l" data-to="d"' in svg


def test_blacklist_violations_are_listed(manager: ClusterManager) -> None:
    status = manager.status(ADMIN)[0]
    url = next(c["repository"] for c in status["components"] if c["path"] == "l")
    manager.blacklist_add(ADMIN, url, "all")
    client = create_app(manager, require_token=True).test_client()
    html = client.get("/ui/blacklist", headers=basic("tok-admin")).get_data(as_text=True)
    assert "every version" in html and "<code>l</code>" in html
    vap = client.get("/ui/vaps/1", headers=basic("tok-admin")).get_data(as_text=True)
    assert "BLACKLISTED" in vap


# -- pure pieces ------------------------------------------------------------------------------


@given(
    st.text(
        alphabet=st.characters(blacklist_characters=":\x00", blacklist_categories=("Cs",)),
        max_size=20,
    ),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=40
    ),
)
def test_basic_password_round_trips(user: str, password: str) -> None:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert basic_password(encoded) == password.strip()


def test_basic_password_refuses_malformed_values() -> None:
    assert basic_password("%%%") is None
    assert basic_password(base64.b64encode(b"no-colon").decode()) is None
    assert basic_password(base64.b64encode(b"user:").decode()) is None


def _latest(found: dict[str, int | None]) -> Any:
    return lambda url: found.get(url)


def test_version_notes() -> None:
    origin = {"url": "http://r/DNS", "cvl": "DNS.cvl", "version": "2"}
    pinned = [{"url": "http://r/DNS", "cvl": "DNS.cvl", "pinned": True, "requested": "2"}]
    latest = _latest({"http://r/DNS": 4})
    note = version_note(origin, [], [], [], latest)
    assert (note.newer, note.level, note.text) == ((3, 4), "warn", "v4 available")
    note = version_note(origin, pinned, [], [], latest)
    assert note.text == "v4 available (pinned to v2)"
    note = version_note(origin, [], [("http://r/DNS/", "4")], [], latest)
    assert (note.newer, note.blacklisted_newer) == ((3,), (4,))
    assert note.text == "v3 available; blacklisted: v4"
    note = version_note(origin, [], [("http://r/DNS", "2")], [], latest)
    assert note.running_blacklisted and note.level == "bad"
    note = version_note(origin, [], [], [("http://r/DNS", "4")], latest)
    assert note.level == "bad" and "failed here" in note.text
    note = version_note(origin, [], [], [], _latest({"http://r/DNS": 2}))
    assert (note.level, note.text) == ("ok", "latest")
    assert version_note(origin, [], [], [], _latest({})).text == "latest unknown"
    assert version_note(None, [], [], [], latest).running is None


def test_picture_layout_keeps_boxes_apart_and_links_on_their_buses(
    manager: ClusterManager,
) -> None:
    status = manager.status(ADMIN)[0]
    state = manager.store.vap(1).state
    assert state is not None
    deps = {vm.path: (vm.needs, vm.requires) for vm in state.vms}
    picture = network_picture(status, deps, {})
    assert [b.label[0] for b in picture.buses] == ["outside", "VAN AcmeGroupware"]
    assert picture.buses[1].label[1] == "VLAN 100 · 10.0.100.0/24"
    boxes = {b.path: b for b in picture.boxes}
    assert set(boxes) == {"d", "f", "l"}
    assert boxes["f"].role == "firewall" and boxes["d"].role == boxes["l"].role == "vm"
    public, van = picture.buses
    assert public.y < boxes["f"].y < van.y < boxes["d"].y == boxes["l"].y
    for a in picture.boxes:
        assert 0 <= a.x and a.x + a.w <= picture.width and a.y + a.h <= picture.height
        for b in picture.boxes:
            if a is not b:
                assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
    bus_ys = {public.y, van.y}
    assert len(picture.links) == 4
    for link in picture.links:
        assert link.y2 in bus_ys
        box = boxes[link.path]
        assert box.x < link.x < box.x + box.w and link.y1 in (box.y, box.y + box.h)
    [arrow] = picture.arrows
    assert (arrow.source, arrow.target, arrow.label) == ("l", "d", "requires DNS")


def _iface(name: str, ip: str, network: str) -> dict[str, str]:
    return {
        "name": name,
        "ip": ip,
        "netmask": "255.255.255.0",
        "network": network,
        "mac": "02:00:00:00:00:01",
    }


def test_picture_of_nested_vans_stacks_segments_outside_in() -> None:
    status = {
        "appliance": "Outer",
        "networks": [
            {"name": "x1", "segment": "<public>", "vlan": None},
            {"name": "v100", "segment": "", "vlan": 100},
            {"name": "v101", "segment": "g", "vlan": 101},
        ],
        "components": [
            {
                "path": "w",
                "type": "Web",
                "state": "running",
                "host": "h",
                "interfaces": [_iface("ethernet0", "10.0.100.4", "v100")],
            },
            {
                "path": "g.a",
                "type": "App",
                "state": "dead",
                "host": "h",
                "interfaces": [_iface("ethernet0", "10.0.101.3", "v101")],
            },
            {
                "path": "f",
                "type": "Firewall",
                "state": "running",
                "host": "h",
                "interfaces": [
                    _iface("ethernet0", "10.0.100.2", "v100"),
                    _iface("ethernet1", "192.0.2.1", "x1"),
                ],
            },
            {
                "path": "g.gw",
                "type": "Router",
                "state": "running",
                "host": "h",
                "interfaces": [
                    _iface("ethernet0", "10.0.101.2", "v101"),
                    _iface("ethernet1", "10.0.100.3", "v100"),
                ],
            },
        ],
    }
    picture = network_picture(status, {"g.a": (("w",), ("HTTP",))}, {})
    public, van, sub = picture.buses
    assert [b.segment for b in picture.buses] == ["<public>", "", "g"]
    assert sub.label == ("VAN g", "VLAN 101 · 10.0.101.0/24")
    boxes = {b.path: b for b in picture.boxes}
    assert {p: b.role for p, b in boxes.items()} == {
        "f": "firewall",
        "g.gw": "gateway",
        "w": "vm",
        "g.a": "vm",
    }
    assert (
        public.y < boxes["f"].y < van.y < boxes["g.gw"].y == boxes["w"].y < sub.y < boxes["g.a"].y
    )
    gateway_links = {link.name: link for link in picture.links if link.path == "g.gw"}
    assert gateway_links["ethernet1"].y2 == van.y and gateway_links["ethernet0"].y2 == sub.y
    [arrow] = picture.arrows
    assert (arrow.source, arrow.target, arrow.label) == ("g.a", "w", "requires HTTP")
    assert arrow.d.startswith(f"M {boxes['g.a'].cx - 20} {boxes['g.a'].y} L")


def test_bare_prefix_redirects_to_the_overview(manager: ClusterManager) -> None:
    client = create_app(manager, require_token=False).test_client()
    answer = client.get("/ui", headers=BROWSER)
    assert answer.status_code == 308 and answer.headers["Location"].endswith("/ui/")


def test_latest_version_asks_the_repository_and_remembers(tmp_path: Path) -> None:
    from reposerver.publish import publish
    from reposerver.repository import Repository
    from reposerver.testing import sample_appliance
    from utility.web import pages

    repo = Repository.create(tmp_path / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "src", "DNS", size="4M", fill_bytes="64k"))
    url = repo.path.as_uri()
    assert pages.latest_version(url) == 1
    publish(repo.path, tmp_path / "src" / "DNS.cvl")
    assert pages.latest_version(url) == 1  # remembered for LATEST_TTL seconds
    pages._latest.clear()
    assert pages.latest_version(url) == 2
    assert pages.latest_version((tmp_path / "missing").as_uri()) is None
    assert pages.latest_version("http://127.0.0.1:9/nothing-listens-here") is None
