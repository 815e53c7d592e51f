"""Imports: file: directories (plain and repository), http(s) repository layout, caching, cycles."""

from __future__ import annotations

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import cvl
from cvl.errors import CvlError, CvlImportError
from cvl.resolver import DefaultResolver, FileResolver, HttpResolver, canonical_url
from tests.conftest import free_port

DNS = 'CVL = "0.8";\nDNS extends VMAppliance {\n  var "required" domain;\n  vm = "dns.vmx";\n}\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def analyse(path: Path, resolver=None, overrides=None) -> cvl.Analysis:
    return cvl.analyse_file(path, resolver=resolver, overrides=overrides)


# -- file: -------------------------------------------------------------------------------------


def test_relative_file_imports_nest_and_resolve_against_the_importing_file(tmp_path):
    write(tmp_path / "lib" / "DNS" / "DNS.cvl", DNS)
    write(
        tmp_path / "lib" / "Net" / "Net.cvl",
        'import { url => "file:../DNS", cvl => "DNS.cvl" } DNS;\n'
        'Net extends VANAppliance { var "required" domain; DNS d; d.domain = domain;'
        ' vanIF = "d.ethernet0"; }\n',
    )
    user = write(
        tmp_path / "me" / "Mine.cvl",
        'import { url => "file:../lib/Net", cvl => "Net.cvl", } Net;\n'
        'Mine extends Net { domain = "example.org"; }\n',
    )
    model = cvl.evaluate_file(user)
    assert model.value("d.domain") == ("example.org",)
    dns_url = f"file://{tmp_path}/lib/DNS"
    assert model.component("d").origin == cvl.Origin("DNS", dns_url, "DNS.cvl", "unversioned")
    assert model.root.origin is not None and model.root.origin.name == "Net"
    assert [(i.name, i.url, i.version, i.pinned) for i in model.imports] == [
        ("Net", f"file://{tmp_path}/lib/Net", "unversioned", False),
        ("DNS", dns_url, "unversioned", False),
    ]


def test_absolute_file_urls(tmp_path):
    write(tmp_path / "DNS" / "DNS.cvl", DNS)
    urls = (f"file://{tmp_path}/DNS", f"file:{tmp_path}/DNS", f"file://localhost{tmp_path}/DNS/")
    for url in urls:
        user = write(
            tmp_path / "u.cvl",
            f'import {{ url => "{url}", cvl => "DNS.cvl" }} DNS;\n'
            'U extends DNS { domain = "x"; }',
        )
        assert cvl.evaluate_file(user).root.origin.url == f"file://{tmp_path}/DNS"


def test_pinned_version_against_plain_directory_is_accepted_with_a_warning(tmp_path):
    write(tmp_path / "DNS" / "DNS.cvl", DNS)
    user = write(
        tmp_path / "u.cvl",
        'import { url => "file:DNS", cvl => "DNS.cvl",'
        ' version => "3" } DNS;\nU extends DNS { domain = "x"; }',
    )
    analysis = analyse(user)
    assert analysis.errors == []
    (record,) = analysis.model.imports
    assert (record.version, record.pinned, record.requested) == ("unversioned", True, "3")
    assert "pins version 3" in analysis.warnings[0] and "u.cvl:1:1" in analysis.warnings[0]


def import_error(tmp_path: Path, import_line: str, **files: str) -> CvlError:
    for name, text in files.items():
        write(tmp_path / name, text)
    user = write(tmp_path / "u.cvl", import_line + '\nU extends VMAppliance { vm = "v"; }\n')
    errors = analyse(user).errors
    assert len(errors) == 1, [e.render() for e in errors]
    assert errors[0].file == str(user)
    return errors[0]


def test_missing_directory_is_an_error_at_the_import(tmp_path):
    error = import_error(tmp_path, 'import { url => "file:Nope", cvl => "N.cvl" } N;')
    assert isinstance(error, CvlImportError)
    assert (error.line, error.col) == (1, 1) and "no such directory" in error.message


def test_missing_file_is_an_error(tmp_path):
    (tmp_path / "D").mkdir()
    error = import_error(tmp_path, 'import { url => "file:D", cvl => "D.cvl" } D;')
    assert "no file D.cvl" in error.message


def test_import_whose_file_does_not_define_the_name(tmp_path):
    error = import_error(
        tmp_path, 'import { url => "file:D", cvl => "DNS.cvl" } Bind;', **{"D/DNS.cvl": DNS}
    )
    assert "does not define Bind" in error.message and "defines DNS" in error.message
    assert (error.line, error.col) == (1, 46)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ('{ url => "file:D" }', "has no cvl"),
        ('{ cvl => "D.cvl" }', "has no url"),
        ('{ url => "file:D", cvl => "D.cvl", colour => "red" }', "unknown import key 'colour'"),
        ('{ url => "file:D", url => "file:E", cvl => "D.cvl" }', "given twice"),
        ('{ url => file, cvl => "D.cvl" }', "must be a quoted string, not a reference"),
        ('{ url => "ftp://x/D", cvl => "D.cvl" }', "unsupported import URL"),
        ('{ url => "file:D", cvl => "../D.cvl" }', "bad cvl file name"),
    ],
)
def test_bad_import_specifications(tmp_path, spec, fragment):
    error = import_error(tmp_path, f"import {spec} D;")
    assert fragment in error.message


def test_errors_in_imported_files_show_the_import_chain(tmp_path):
    write(
        tmp_path / "DNS" / "DNS.cvl", 'DNS extends VMAppliance {\n  vm = "v";\n  colour = "red";\n}'
    )
    write(
        tmp_path / "Net" / "Net.cvl",
        '\nimport { url => "file:../DNS", cvl => "DNS.cvl" } DNS;\n'
        'Net extends VANAppliance { DNS d; vanIF = "x"; }',
    )
    user = write(
        tmp_path / "u.cvl", 'import { url => "file:Net", cvl => "Net.cvl" } Net;\nU extends Net { }'
    )
    (error,) = analyse(user).errors
    assert error.file == f"{tmp_path}/DNS/DNS.cvl" and (error.line, error.col) == (3, 3)
    lines = error.render().splitlines()
    assert lines[0].startswith(f"{tmp_path}/DNS/DNS.cvl:3:3: error: cannot assign colour")
    assert lines[1:3] == ['      colour = "red";', "      ^"]
    assert lines[3:] == [
        f"  imported from {tmp_path}/Net/Net.cvl:2:1",
        f"  imported from {user}:1:1",
    ]


def test_syntax_error_in_imported_file_has_chain(tmp_path):
    write(tmp_path / "D" / "D.cvl", "D extends VMAppliance { vm = ; }")
    user = write(
        tmp_path / "u.cvl", 'import { url => "file:D", cvl => "D.cvl" } D;\nU extends D {}'
    )
    (error,) = analyse(user).errors
    assert error.line == 1 and error.col == 30
    assert error.render().endswith(f"imported from {user}:1:1")


def test_import_cycle_is_reported_with_its_chain(tmp_path):
    write(
        tmp_path / "A" / "A.cvl",
        'import { url => "file:../B", cvl => "B.cvl" } B;\nA extends VMAppliance { vm = "a"; }',
    )
    write(
        tmp_path / "B" / "B.cvl",
        'import { url => "file:../A", cvl => "A.cvl" } A;\nB extends VMAppliance { vm = "b"; }',
    )
    user = write(
        tmp_path / "u.cvl", 'import { url => "file:A", cvl => "A.cvl" } A;\nU extends A {}'
    )
    errors = analyse(user).errors
    assert len(errors) == 1
    assert "import cycle" in errors[0].message
    assert (
        f"file://{tmp_path}/A/A.cvl -> file://{tmp_path}/B/B.cvl -> file://{tmp_path}/A/A.cvl"
        in errors[0].message
    )
    assert errors[0].file == f"{tmp_path}/B/B.cvl"


def test_bare_repository_directories_go_through_the_repository_reader(tmp_path):
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "DNS")], check=True)
    calls = []

    def reader(directory: Path, name: str, version: str | None) -> tuple[str, str]:
        calls.append((directory, name, version))
        return DNS, version or "9"

    user = write(
        tmp_path / "u.cvl",
        'import { url => "file:DNS", cvl => "DNS.cvl" } DNS;\nU extends DNS { domain = "x"; }',
    )
    model = cvl.evaluate_file(user, resolver=DefaultResolver(repo_reader=reader))
    assert calls == [(tmp_path / "DNS", "DNS.cvl", None)]
    assert model.root.origin.version == "9" and model.imports[0].version == "9"
    errors = analyse(user, resolver=DefaultResolver()).errors
    assert "is a git repository" in errors[0].message


def test_canonical_url():
    assert canonical_url("file:DNS", "/x/y") == "file:///x/y/DNS"
    assert canonical_url("file:../DNS/", "/x/y") == "file:///x/DNS"
    assert canonical_url("https://h.example/DNS/", None) == "https://h.example/DNS"
    # a repository's clone URL names the repository itself
    assert canonical_url("https://h.example/DNS.git", None) == "https://h.example/DNS"
    assert canonical_url("https://h.example/a/DNS.git/", None) == "https://h.example/a/DNS"
    # ...but only as the last path segment: never the host, a bare ".git", or past a query
    assert canonical_url("https://h.git", None) == "https://h.git"
    assert canonical_url("https://h.example/.git", None) == "https://h.example/.git"
    assert canonical_url("https://h/D.git?x=1", None) == "https://h/D.git?x=1"
    with pytest.raises(CvlImportError):
        canonical_url("file:DNS", None)
    with pytest.raises(CvlImportError):
        canonical_url("file://otherhost/DNS", None)


def test_file_resolver_reads_plain_directories(tmp_path):
    write(tmp_path / "D" / "D.cvl", "text")
    assert FileResolver().fetch("file:D", "D.cvl", None, str(tmp_path)) == ("text", "unversioned")


# -- http(s): ---------------------------------------------------------------------------------


class RepositoryServer:
    """A tiny stand-in for the repository server's URL layout (versions 3 and 4 of DNS)."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        files = {
            "/DNS/versions/3/DNS.cvl": DNS,
            "/DNS/versions/4/DNS.cvl": DNS.replace("dns.vmx", "dns4.vmx"),
        }
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                hits.append(self.path)
                if self.path == "/DNS/latest/DNS.cvl":
                    self.send_response(302)
                    self.send_header("Location", "/DNS/versions/4/DNS.cvl")
                    self.end_headers()
                elif self.path == "/Bad/latest/B.cvl":
                    self.send_response(302)
                    self.send_header("Location", "/elsewhere/B.cvl")
                    self.end_headers()
                elif self.path == "/elsewhere/B.cvl":
                    self._send(200, b"B extends VMAppliance {}")
                elif self.path in files:
                    self._send(200, files[self.path].encode())
                else:
                    self._send(404, b"not found")

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def server():
    srv = RepositoryServer()
    srv.thread.start()
    yield srv
    srv.server.shutdown()
    srv.server.server_close()


def test_http_pinned_and_latest_versions(server, tmp_path):
    pinned = write(
        tmp_path / "p.cvl",
        f'import {{ url => "{server.url}/DNS", cvl => "DNS.cvl", '
        'version => "3" } DNS;\nP extends DNS { domain = "x"; }',
    )
    latest = write(
        tmp_path / "l.cvl",
        f'import {{ url => "{server.url}/DNS/", cvl => "DNS.cvl" }}'
        ' DNS;\nL extends DNS { domain = "x"; }',
    )
    resolver = DefaultResolver()
    model = cvl.evaluate_file(pinned, resolver=resolver)
    assert model.root.param("vm") == ("dns.vmx",)
    assert model.root.origin == cvl.Origin("DNS", f"{server.url}/DNS", "DNS.cvl", "3")
    model = cvl.evaluate_file(latest, resolver=resolver)
    assert model.root.param("vm") == ("dns4.vmx",)
    assert model.imports[0].version == "4" and not model.imports[0].pinned
    assert server.hits == [
        "/DNS/versions/3/DNS.cvl",
        "/DNS/latest/DNS.cvl",
        "/DNS/versions/4/DNS.cvl",
    ]
    cvl.evaluate_file(pinned, resolver=resolver)  # immutable version: served from the cache
    assert len(server.hits) == 3


def test_http_import_by_clone_url_resolves_like_the_repository_url(server, tmp_path):
    user = write(
        tmp_path / "g.cvl",
        f'import {{ url => "{server.url}/DNS.git", cvl => "DNS.cvl", version => "3" }} DNS;\n'
        'G extends DNS { domain = "x"; }',
    )
    model = cvl.evaluate_file(user, resolver=DefaultResolver())
    assert model.root.param("vm") == ("dns.vmx",)
    assert model.root.origin == cvl.Origin("DNS", f"{server.url}/DNS", "DNS.cvl", "3")
    assert [record.url for record in model.imports] == [f"{server.url}/DNS"]
    assert server.hits == ["/DNS/versions/3/DNS.cvl"]
    # the resolver on its own strips it too (latest: the redirect check uses the same base)
    text, version = HttpResolver(timeout=5).fetch(f"{server.url}/DNS.git/", "DNS.cvl", None, None)
    assert version == "4" and "dns4.vmx" in text


def test_http_errors(server, tmp_path, monkeypatch):
    http = HttpResolver(timeout=5)
    monkeypatch.setattr("cvl.resolver.MAX_CVL_BYTES", 20)
    with pytest.raises(CvlImportError, match="larger than 20 bytes"):
        http.fetch(f"{server.url}/DNS", "DNS.cvl", "3", None)
    monkeypatch.undo()
    with pytest.raises(CvlImportError, match="has no version 7 of DNS.cvl .HTTP 404"):
        http.fetch(f"{server.url}/DNS", "DNS.cvl", "7", None)
    with pytest.raises(CvlImportError, match="did not redirect"):
        http.fetch(f"{server.url}/Bad", "B.cvl", None, None)
    with pytest.raises(CvlImportError) as caught:
        http.fetch(f"http://127.0.0.1:{free_port()}/DNS", "DNS.cvl", None, None)
    assert caught.value.unreachable and "cannot reach" in caught.value.message
    user = write(
        tmp_path / "u.cvl",
        f'import {{ url => "{server.url}/Nope", cvl => "N.cvl" }} N;\n'
        'U extends VMAppliance { vm = "x"; }',
    )
    (error,) = analyse(user).errors
    assert (error.line, error.col) == (1, 1) and "cannot import N" in error.message
    assert error.render().splitlines()[1].startswith("    import {")
    dead = write(
        tmp_path / "d.cvl",
        f'import {{ url => "http://127.0.0.1:{free_port()}/D",'
        ' cvl => "D.cvl" } D;\nU extends VMAppliance { vm = "x"; }',
    )
    (error,) = analyse(dead).errors
    assert isinstance(error, CvlImportError) and error.unreachable
    from click.testing import CliRunner

    from cui.main import cli

    for command in ("check", "eval"):
        result = CliRunner().invoke(cli, [command, str(dead)])
        assert result.exit_code == 3 and "cannot reach" in result.stderr


def test_relative_file_import_inside_http_file_is_an_error(tmp_path):
    class Resolver:
        def fetch(self, url, name, version, base_dir):
            if url.startswith("http"):
                text = 'import { url => "file:x", cvl => "x.cvl" } X;\nD extends VMAppliance {}'
                return text, "1"
            raise AssertionError("must not be reached")

    user = write(
        tmp_path / "u.cvl",
        'import { url => "http://h.example/D", cvl => "D.cvl" } D;\nU extends D { vm = "v"; }',
    )
    errors = analyse(user, resolver=Resolver()).errors
    assert any(
        "has no directory" in e.message and e.file == "http://h.example/D/versions/1/D.cvl"
        for e in errors
    ), [e.render() for e in errors]
