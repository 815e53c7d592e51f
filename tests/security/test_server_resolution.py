"""Issue 10 item 2: the server never reads host files or internal URLs for a pusher or a viewer.

Each attack is a stock `git push` of a version whose CVL imports something the server must not
read (a host file, a loopback listener, an allow-listed origin that redirects to one, an
allow-listed origin whose answer is not CVL), through real gunicorn. Each asserts the refusal,
that the planted marker appears in no answer, that the listener got no request (its log is read
after the push returned, when the server has finished with it), and that the store is as it was.
The pages are checked the same way: a version whose CVL imports an internal URL is viewed, and
the viewer's GETs make the server fetch nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from cvl.errors import CvlImportError
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.server_resolver import ServerResolver, origin
from reposerver.testing import Server, running_server, sample_appliance
from tests.security.sec_web_support import MARKER, clone, git, listening, store_state

pytestmark = pytest.mark.slow

PAGES = ("/", "/DNS/", "/DNS/?version=1", "/DNS/?version=2", "/DNS/diff/1/2")


def import_line(
    url: str, cvl: str = "secret.cvl", version: str | None = None, name: str = "Secret"
) -> str:
    pinned = f', version => "{version}"' if version else ""
    return f'import {{ url => "{url}", cvl => "{cvl}"{pinned} }} {name};\n'


def push_version(server: Server, work: Path, prefix: str) -> str:
    """Commit DNS.cvl with `prefix` prepended as v2 and push it; return git's whole output."""
    cvl = work / "DNS.cvl"
    cvl.write_text(prefix + cvl.read_text())
    git("commit", "-q", "-am", "v2", cwd=work)
    git("tag", "-a", "v2", "-m", "v2", cwd=work)
    pushed = git("push", "origin", "main", "v2", cwd=work, check=False)
    return pushed.stdout + pushed.stderr


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Repository DNS with v1 behind gunicorn, plus a host file holding the marker."""
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.create(root / "DNS")
    publish(repo.path, sample_appliance(tmp_path / "app"))
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret.cvl").write_text(f"{MARKER} = 1;\n")
    yield root, repo, host


def assert_refused(output: str, before: dict[str, object], repo: Repository, why: str) -> None:
    assert "[remote rejected]" in output and why in output, output
    assert MARKER not in output
    assert store_state(repo.path) == before


def test_file_import_in_pushed_cvl_is_refused_unread(served, tmp_path: Path) -> None:
    root, repo, host = served
    with running_server(root) as server:
        work = clone(server, "DNS", tmp_path / "work")
        before = store_state(repo.path)
        for url, why in (
            (f"file:{host}", "does not read files"),
            (f"file://{host}", "does not read files"),
            (f"file://localhost{host}", "does not read files"),
            ("file:../../host", "relative file URL"),  # pushed text has no directory
        ):
            git("reset", "-q", "--hard", "origin/main", cwd=work)
            git("tag", "-d", "v2", cwd=work, check=False)
            output = push_version(server, work, import_line(url))
            assert_refused(output, before, repo, why)


def test_import_of_a_loopback_listener_is_refused_without_a_request(served, tmp_path) -> None:
    root, repo, _ = served
    with listening() as internal, running_server(root) as server:
        work = clone(server, "DNS", tmp_path / "work")
        before = store_state(repo.path)
        output = push_version(server, work, import_line(internal.url + "/DNS"))
        assert_refused(output, before, repo, "resolves imports only from its own repositories")
        assert internal.requests == []


def test_allow_listed_origin_may_not_redirect_off_the_list(served, tmp_path) -> None:
    root, repo, _ = served
    with listening() as internal, listening(redirect=None) as allowed:
        allowed.redirect = internal.url
        extra = {"allowed_import_origins": [allowed.url]}
        with running_server(root, extra=extra) as server:
            work = clone(server, "DNS", tmp_path / "work")
            before = store_state(repo.path)
            output = push_version(server, work, import_line(allowed.url + "/Lib", version="1"))
            assert_refused(output, before, repo, "redirected off the allowed origins")
        assert [path for _, path, _ in allowed.requests] == ["/Lib/versions/1/secret.cvl"]
        assert internal.requests == []


def test_refusal_never_quotes_what_an_allowed_origin_answered(served, tmp_path) -> None:
    root, repo, _ = served
    with listening(body=f"{MARKER} is not CVL\n") as allowed:
        with running_server(root, extra={"allowed_import_origins": [allowed.url]}) as server:
            work = clone(server, "DNS", tmp_path / "work")
            before = store_state(repo.path)
            output = push_version(server, work, import_line(allowed.url + "/Lib", version="1"))
            assert_refused(output, before, repo, "content is not shown")
        assert len(allowed.requests) == 1


def test_slow_or_huge_allowed_origin_is_cut_off(served, tmp_path) -> None:
    """Each fetch has one total timeout and a size limit, even from an allowed origin."""
    root, repo, _ = served
    with listening(body="Secret extends VMAppliance { }\n") as slow, listening() as huge:
        slow.delay = 5.0
        huge.body = "/*" + "x" * (5 << 20) + "*/"
        extra = {"allowed_import_origins": [slow.url, huge.url], "import_timeout_seconds": 1}
        with running_server(root, extra=extra) as server:
            work = clone(server, "DNS", tmp_path / "work")
            before = store_state(repo.path)
            started = time.monotonic()
            output = push_version(server, work, import_line(slow.url + "/Lib", version="1"))
            assert time.monotonic() - started < 4.5, "the push waited for the slow origin"
            assert_refused(output, before, repo, "cannot reach")
            git("reset", "-q", "--hard", "origin/main", cwd=work)
            git("tag", "-d", "v2", cwd=work)
            output = push_version(server, work, import_line(huge.url + "/Lib", version="1"))
            assert_refused(output, before, repo, "larger than 4194304 bytes")


def test_import_of_this_server_reads_the_repository_in_process(served, tmp_path) -> None:
    """The positive case: an import by this server's URL works, with no HTTP request at all
    (gunicorn's own access would show as a second request to it; the import is read from disk),
    and the pages show what the push recorded."""
    root, repo, _ = served
    lib = Repository.create(root / "Lib")
    publish(lib.path, sample_appliance(tmp_path / "libapp", "Lib"))
    with running_server(root) as server:
        work = clone(server, "DNS", tmp_path / "work")
        line = import_line(f"{server.url}/Lib", "Lib.cvl", "1", "Lib")
        output = push_version(server, work, line + 'Extra extends Lib { domain = "x"; }\n')
        assert "[remote rejected]" not in output, output
        record = json.loads((repo.path / "versions" / "2.json").read_text())
        assert record["tag"] == Repository(repo.path).tag(2).id.decode()
        page = requests.get(server.url + "/DNS/?version=2", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "DNS" in page.text
    assert Repository(repo.path).latest() == 2


def test_pages_never_resolve_imports_for_a_viewer(served, tmp_path: Path) -> None:
    """A version whose CVL imports an internal URL (published on the server's disk, so no push
    recorded it): every page and its JSON twin is served without a request to that URL."""
    root, repo, _ = served
    with listening(body='Secret extends VMAppliance { var "required" leak; }\n') as internal:
        app = tmp_path / "app"
        cvl = app / "DNS.cvl"
        cvl.write_text(import_line(internal.url + "/Lib", version="1") + cvl.read_text())
        publish(repo.path, cvl)  # the publisher's own machine may fetch it; now forget that
        internal.requests.clear()
        internal.body = MARKER
        before = store_state(repo.path)
        with running_server(root) as server:
            for page in PAGES:
                for accept in ("text/html", "application/json"):
                    answer = requests.get(server.url + page, headers={"Accept": accept})
                    assert answer.status_code < 500, (page, accept, answer.status_code)
                    assert MARKER not in answer.text
        assert internal.requests == []
        assert store_state(repo.path) == before


@given(st.text(max_size=60), st.sampled_from(["http://", "https://", "file:", ""]))
def test_any_import_url_is_refused_cleanly_without_network(tail: str, scheme: str) -> None:
    """Whatever URL pushed CVL names, the resolver (no allow-list) answers with a CvlImportError
    or reads an own repository; it never raises anything else and never opens a connection."""
    resolver = ServerResolver(Path("/nonexistent-root"), ["http://repo.example:8080"])
    try:
        resolver.fetch(scheme + tail, "DNS.cvl", None, None)
    except CvlImportError:
        pass


def test_own_repository_urls_map_to_names_only_inside_the_base() -> None:
    resolver = ServerResolver(Path("/r"), ["http://repo.example:8080/base/", None])
    own = resolver.own_repository
    assert own("http://repo.example:8080/base/DNS") == "DNS"
    assert own("HTTP://REPO.EXAMPLE:8080/base/DNS.git/") == "DNS"
    assert own("http://repo.example/base/DNS") is None  # another port
    assert own("http://repo.example:8080/DNS") is None  # outside the base path
    assert own("http://repo.example:8080/base/a/b") is None
    assert own("http://repo.example:8080/base/..") is None
    assert own("http://repo.example:8080/base/%2e%2e") is None
    assert origin("https://Host") == "https://host:443" and origin("ftp://x") is None


def test_push_by_stock_receive_pack_resolves_like_the_server(served, tmp_path: Path) -> None:
    """A push to the repository's path (ssh or local: git's own receive-pack and our hooks)
    is checked with the same restricted resolver: a host file import is refused unread."""
    _, repo, host = served
    work = tmp_path / "work"
    git("clone", "-q", str(repo.path), str(work))
    git("config", "lfs.locksverify", "false", cwd=work)
    before = store_state(repo.path)
    cvl = work / "DNS.cvl"
    cvl.write_text(import_line(f"file:{host}") + cvl.read_text())
    git("commit", "-q", "-am", "v2", cwd=work)
    git("tag", "-a", "v2", "-m", "v2", cwd=work)
    pushed = git("push", "origin", "main", "v2", cwd=work, check=False)
    output = pushed.stdout + pushed.stderr
    assert pushed.returncode != 0 and "does not read files" in output, output
    assert MARKER not in output
    assert store_state(repo.path) == before
