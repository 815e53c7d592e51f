"""The web pages in real headless Chromium (selenium + Debian's chromium-driver).

- Repository pages served by real gunicorn: index, a repository (a signed and verified version,
  the CVL of a version, `<script>` in a CVL string shown as text in the DOM), a version diff
  that shows the changed parameter.
- Utility pages served by the real daemon (`cui utility serve --listen`, `test:` hosts), signed
  in with an API token as HTTP Basic password: hosts, the Groupware VAP drawn with its three
  components and their addresses, and the history showing an automatic update that a real
  publish event caused; a blacklist violation; live refresh picking up a new host.

A screenshot of each page goes to `artifacts/pages-*.png`.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from reposerver import trust
from reposerver.publish import publish
from reposerver.repo_config import RepoConfig, Subscriber
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance, write_pattern
from tests.conftest import REPO_ROOT
from tests.daemons import UtilityDaemon
from utility.adapters.bundles import read_bundle
from utility.adapters.simulation import paper_tree, simulated_host_uri

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver",
)
SECRET = "s3cret-rootpw-never-shown"
WEB_V1 = """CVL = "0.8";
/* A web server whose title holds markup */
Web extends VMAppliance {
  var "required" domain;
  var title, port;
  title = "<script>window.pwned = 1;</script>";
  port = "80";
  vm = "web.xml";
  datadisks = { device => "vdb", size => "100mb" };
  provides = "HTTP";
}
"""
WEB_V2 = WEB_V1.replace('port = "80"', 'port = "8080"')


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.add_argument("--user-data-dir=" + tempfile.mkdtemp(prefix="chrome-", dir=tmp_path))
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, path: Path) -> None:
    """The whole page, not just the window."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height), 600), 6000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    assert path.stat().st_size > 10_000


def text(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(driver.find_element(By.CSS_SELECTOR, selector).text.split())


# -- repository pages -----------------------------------------------------------------------


def test_repository_pages_in_chromium(browser: Any, tmp_path: Path, artifacts_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    root = tmp_path / "repos"
    repo = Repository.create(root / "Web")
    src = tmp_path / "src"
    cvl = sample_appliance(src, "Web", size="8M")
    cvl.write_text(WEB_V1)
    publish(repo.path, cvl)
    key = tmp_path / "signing_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pub", "-f", str(key)], check=True
    )
    public = key.with_suffix(".pub").read_text().split()
    trust.add_ssh_signer(repo.path, f"publisher@example.org {public[0]} {public[1]}")
    cvl.write_text(WEB_V2)
    write_pattern(src / "root.qcow2", 0x42, "2M", "64k")
    publish(repo.path, cvl, sign=str(key))

    with running_server(root, workers=2) as server:
        browser.get(server.url + "/")
        assert browser.title.startswith("Appliance repositories")
        row = text(browser, "table.list tbody tr")
        assert row.startswith("Web v2") and "verified" in row and "unsigned" not in row
        screenshot(browser, artifacts_dir / "pages-repository-index.png")

        browser.get(server.url + "/Web/")
        assert 'port = "8080";' in text(browser, "#cvl")
        versions = text(browser, "table.versions")
        assert "v2" in versions and "✔ verified publisher@example.org (ssh)" in versions
        assert "v1" in versions and "unsigned" in versions
        # The <script> in a CVL string value is text in the DOM, never an element.
        assert 'title = "<script>window.pwned = 1;</script>";' in text(browser, "#cvl")
        title_row = browser.find_element(By.XPATH, "//table[@id='params']//tr[th/code='title']")
        assert '"<script>window.pwned = 1;</script>"' in title_row.text
        assert browser.execute_script("return document.querySelectorAll('main script').length") == 0
        assert browser.execute_script("return window.pwned") is None
        # pages.js ran under the page's CSP: every snippet got its copy button.
        assert len(browser.find_elements(By.CSS_SELECTOR, "pre[data-copy] button.copy")) == 3
        assert text(browser, "pre.snippet") == f"git clone {server.url}/Web.git copy"
        screenshot(browser, artifacts_dir / "pages-repository.png")

        browser.get(server.url + "/Web/?version=1")
        assert 'port = "80";' in text(browser, "#cvl")
        assert "8080" not in text(browser, "#cvl")

        browser.get(server.url + "/Web/diff/1/2")
        port = browser.find_element(By.XPATH, "//table[@id='param-diff']//tr[th/code='port']")
        assert " ".join(port.text.split()) == 'port changed default changed "80" "8080"'
        changed = [
            " ".join(r.text.split())
            for r in browser.find_elements(
                By.CSS_SELECTOR, "#cvl-diff tr.d-del, #cvl-diff tr.d-add"
            )
        ]
        assert changed == ['7 − port = "80";', '7 + port = "8080";']
        screenshot(browser, artifacts_dir / "pages-repository-diff.png")

        # JSON clients at the same URLs are unaffected.
        assert requests.get(server.url + "/Web/", timeout=10).json()["latest"] == 2


# -- utility pages --------------------------------------------------------------------------


def page(daemon: UtilityDaemon, path: str) -> str:
    """The page URL with the token as Basic password (Chromium answers the challenge)."""
    return f"http://admin:{daemon.token}@127.0.0.1:{daemon.port}{path}"


def test_utility_pages_in_chromium(
    browser: Any, tmp_path: Path, artifacts_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The utility listens on loopback; a local publish announces there only when the server
    # config allows it.
    server_config = tmp_path / "server-config.json"
    server_config.write_text('{"allowed_subscriber_networks": ["127.0.0.0/8"]}')
    monkeypatch.setenv("COLLECTIVE_REPOSERVER_CONFIG", str(server_config))

    shared = secrets.token_hex(16)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    daemon = UtilityDaemon(state, tcp=True, env={"COLLECTIVE_EVENTS_SECRET": shared})
    try:
        # Groupware whose DNS comes, unpinned, from a repository that announces to the utility.
        acme = paper_tree(REPO_ROOT / "examples" / "paper", tmp_path / "acme")
        dns_repo = Repository.create(
            tmp_path / "repos" / "DNS",
            RepoConfig(subscribers=(Subscriber(daemon.url + "/v1/events/publish", secret=shared),)),
        )
        publish(dns_repo.path, acme.parent / "DNS" / "DNS.cvl")
        groupware = acme.parent / "Groupware" / "Groupware.cvl"
        groupware.write_text(
            groupware.read_text().replace(
                'url => "file:../DNS",\n    cvl => "DNS.cvl",\n    version => "3"',
                f'url => "file:{dns_repo.path}",\n    cvl => "DNS.cvl"',
            )
        )
        ldap = acme.parent / "OpenLDAP" / "OpenLDAP.cvl"
        ldap.write_text(
            ldap.read_text().replace(
                "var port, sport;", 'var port, sport;\n    var "sensitive" rootpw;'
            )
        )

        daemon.api(
            "POST",
            "/v1/hosts",
            {"name": "h1", "uri": simulated_host_uri(tmp_path, "h1"), "memory": "1G", "max_vms": 8},
        )
        daemon.api("POST", "/v1/vlans", {"range": "100-103"})
        daemon.api("POST", "/v1/publicips", {"range": "192.0.2.1-192.0.2.4"})
        started = daemon.api(
            "POST",
            "/v1/vaps/start",
            {"bundle": read_bundle(acme).to_wire(), "secrets": {"l.rootpw": SECRET}},
        )
        vap_id = started["id"]

        def versions() -> dict[str, Any]:
            [vap] = daemon.api("GET", "/v1/vaps")
            return {c["path"]: c["version"] for c in vap["components"]}

        assert versions()["d"] == "1"
        write_pattern(acme.parent / "DNS" / "system.qcow2", 0x42, "1M", "64k")
        publish(dns_repo.path, acme.parent / "DNS" / "DNS.cvl")  # announces v2: automatic update
        deadline = time.monotonic() + 20
        while versions()["d"] != "2":
            assert time.monotonic() < deadline, daemon.output()
            time.sleep(0.2)
        daemon.api("POST", "/v1/blacklist", {"url": dns_repo.path.as_uri(), "version": "2"})
        [status] = daemon.api("GET", "/v1/vaps")

        browser.get(page(daemon, "/ui/"))
        assert browser.title.startswith("Cluster")
        hosts = text(browser, "#hosts")
        assert "h1" in hosts and "192.0 MiB of 1.0 GiB" in hosts and "3 of 8 VMs" in hosts
        assert browser.find_element(By.CSS_SELECTOR, "#hosts meter").get_attribute("value") == str(
            3 * 64 << 20
        )
        assert "1 running component uses a blacklisted version" in text(browser, "main")
        screenshot(browser, artifacts_dir / "pages-utility-overview.png")
        # Live refresh: a host added through the API appears without reloading the page.
        daemon.api(
            "POST",
            "/v1/hosts",
            {"name": "h2", "uri": simulated_host_uri(tmp_path, "h2"), "memory": "2G", "max_vms": 4},
        )
        WebDriverWait(browser, 15).until(lambda d: "h2" in text(d, "#hosts"))

        browser.get(page(daemon, f"/ui/vaps/{vap_id}"))
        boxes = browser.find_elements(By.CSS_SELECTOR, "#vap-picture g.comp")
        assert sorted(b.get_attribute("data-path") for b in boxes) == ["d", "f", "l"]
        picture = browser.execute_script(
            "return document.getElementById('vap-picture').textContent"
        )
        for component in status["components"]:
            for iface in component["interfaces"]:
                assert f"{iface['name']} {iface['ip']}" in picture
        firewall = browser.find_element(By.CSS_SELECTOR, "#vap-picture g.comp.role-firewall")
        assert firewall.get_attribute("data-path") == "f"
        assert "v2 · BLACKLISTED" in firewall.find_element(By.XPATH, "../*[@data-path='d']").text
        assert (
            browser.find_element(By.CSS_SELECTOR, "#vap-picture g.dep").get_attribute("data-from")
            == "l"
        )
        screenshot(browser, artifacts_dir / "pages-utility-vap.png")

        browser.get(page(daemon, "/ui/history"))
        row = text(browser, "#history tbody tr")
        assert "automatic push" in row and "d v1 → v2" in row and "applied" in row
        screenshot(browser, artifacts_dir / "pages-utility-history.png")

        browser.get(page(daemon, "/ui/blacklist"))
        assert "d v2" in text(browser, "#violations")
        screenshot(browser, artifacts_dir / "pages-utility-blacklist.png")

        for path in ("/ui/", f"/ui/vaps/{vap_id}", "/ui/history", "/ui/blacklist"):
            browser.get(page(daemon, path))
            assert SECRET not in browser.page_source
            assert not browser.find_elements(By.CSS_SELECTOR, "main form, main button")
        # Without the token the pages are refused, like the API.
        assert requests.get(daemon.url + "/ui/", timeout=10).status_code == 401
    finally:
        daemon.kill()
