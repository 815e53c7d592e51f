"""CVL imports against the real repository server (gunicorn) and real repository directories.

The unit tests use a stand-in HTTP server; this checks the URL contract with the real one:
`/NAME/versions/N/FILE` for a pinned import, `/NAME/latest/FILE` redirecting for an unpinned one,
and `file:` imports of a bare repository directory through `reposerver.client.make_resolver`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cui.main import cli
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance

pytestmark = pytest.mark.slow


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """A server root holding DNS with versions 1 and 2 (v2 names another domain XML)."""
    root = tmp_path / "root"
    repo = Repository.create(root / "DNS")
    cvl_file = sample_appliance(tmp_path / "app", size="8M", fill_bytes="64k")
    publish(repo.path, cvl_file)
    cvl_file.write_text(cvl_file.read_text().replace('provides = "DNS";', 'provides = "DNS2";'))
    publish(repo.path, cvl_file)
    return root


def user_file(directory: Path, url: str, version: str | None) -> Path:
    pin = f', version => "{version}"' if version else ""
    path = directory / f"user{version or ''}.cvl"
    path.write_text(
        f'import {{ url => "{url}", cvl => "DNS.cvl"{pin} }} DNS;\n'
        'MyDNS extends DNS { domain = "acme.org"; }\n'
    )
    return path


def evaluate(path: Path) -> dict:
    result = CliRunner().invoke(cli, ["eval", str(path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_http_imports_from_the_real_repository_server(published: Path, tmp_path: Path) -> None:
    with running_server(published, workers=1) as server:
        url = f"{server.url}/DNS"
        pinned = evaluate(user_file(tmp_path, url, "1"))
        latest = evaluate(user_file(tmp_path, url, None))
        missing = CliRunner().invoke(cli, ["check", str(user_file(tmp_path, url, "9"))])
    root = pinned["components"][""]
    assert root["params"]["provides"] == ["DNS"]
    assert root["origin"] == {"name": "DNS", "url": url, "cvl": "DNS.cvl", "version": "1"}
    assert latest["components"][""]["params"]["provides"] == ["DNS2"]
    assert latest["imports"] == [
        {
            "name": "DNS",
            "url": url,
            "cvl": "DNS.cvl",
            "version": "2",
            "pinned": False,
            "requested": None,
        }
    ]
    assert missing.exit_code == 1
    assert f"user9.cvl:1:1: error: cannot import DNS: {url} has no version 9" in missing.stderr


def test_import_by_clone_url_against_the_real_repository_server(
    published: Path, tmp_path: Path
) -> None:
    """`url => "…/DNS.git"` (what `git clone` takes) imports the same repository as `…/DNS`."""
    with running_server(published, workers=1) as server:
        by_clone_url = evaluate(user_file(tmp_path, f"{server.url}/DNS.git", "1"))
        latest = evaluate(user_file(tmp_path, f"{server.url}/DNS.git/", None))
    url = f"{server.url}/DNS"
    assert by_clone_url["components"][""]["origin"] == {
        "name": "DNS",
        "url": url,
        "cvl": "DNS.cvl",
        "version": "1",
    }
    assert by_clone_url["components"][""]["params"]["provides"] == ["DNS"]
    assert latest["components"][""]["params"]["provides"] == ["DNS2"]
    assert [(i["url"], i["version"]) for i in latest["imports"]] == [(url, "2")]


def test_file_imports_of_a_repository_directory_through_the_real_cui(
    published: Path, tmp_path: Path
) -> None:
    cui = Path(sys.executable).parent / "cui"
    url = (published / "DNS").as_uri()
    for version, provides in (("1", "DNS"), (None, "DNS2")):
        done = subprocess.run(
            [str(cui), "eval", str(user_file(tmp_path, url, version)), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert data["components"][""]["params"]["provides"] == [provides]
        assert data["imports"][0]["version"] == (version or "2")
