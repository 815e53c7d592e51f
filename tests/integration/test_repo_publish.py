"""Publish with real qemu-img: deltas, atomicity, client and cache, local git hooks, the CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cui.main import cli
from reposerver import checks
from reposerver.client import make_resolver, open_repository
from reposerver.errors import ImmutableVersion, IntegrityError, InvalidAppliance
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance, write_pattern

pytestmark = pytest.mark.slow


def git(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"git {args}: {result.stderr}")
    return result


def identical(a: Path, b: Path) -> bool:
    return (
        subprocess.run(
            ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(a), str(b)],
            capture_output=True,
        ).returncode
        == 0
    )


@pytest.fixture
def two_versions(tmp_path: Path) -> tuple[Repository, Path]:
    repo = Repository.create(tmp_path / "root" / "DNS")
    cvl = sample_appliance(tmp_path / "app", size="32M", fill_bytes="8M")
    first = publish(repo.path, cvl)
    assert first.version == 1 and first.disks[0].parent is None
    write_pattern(tmp_path / "app" / "root.qcow2", 0x77, "5M", "64k")
    second = publish(repo.path, cvl)
    assert second.version == 2 and second.disks[0].parent == first.disks[0].sha256
    assert second.stored_bytes < 256 * 1024, "v2 stores only the changed clusters (+ metadata)"
    assert second.image_bytes > 8 << 20
    return repo, tmp_path / "app" / "root.qcow2"


def test_versions_hold_cvl_xml_and_program_disk_pointers_only(two_versions) -> None:
    repo, _ = two_versions
    assert sorted(repo.files(2)) == [".gitattributes", "DNS.cvl", "dns.xml", "root.qcow2"]
    assert repo.file(2, "root.qcow2").pointer is not None
    assert repo.file(2, "DNS.cvl").pointer is None
    assert git("fsck", "--strict", cwd=repo.path).returncode == 0


def test_chain_materialises_in_a_cache_locally_and_over_http(two_versions, tmp_path: Path) -> None:
    repo, image = two_versions
    local_top = open_repository(repo.path.as_uri()).fetch_disk(2, "root.qcow2", tmp_path / "cache1")
    assert identical(image, local_top)
    instance = tmp_path / "instance.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(local_top),
            str(instance),
        ],
        check=True,
    )
    assert identical(image, instance), "the utility's instance overlay sees version 2"
    with running_server(repo.path.parent, workers=2) as server:
        remote = open_repository(server.url + "/DNS")
        assert remote.latest() == 2 and remote.commit(2) == repo.version(2).commit
        assert remote.tag(1) == repo.raw_tag(1)
        assert remote.read_file(1, "DNS.cvl") == repo.file(1, "DNS.cvl").data
        cache = tmp_path / "cache2"
        disk = remote.disks(2)[0]
        # Resume: a partial download of the top object is completed with a Range request.
        top = disk["chain"][-1]["sha256"]
        full = repo.store.path(top).read_bytes()
        (cache / "objects" / ".partial").mkdir(parents=True)
        (cache / "objects" / ".partial" / top).write_bytes(full[: len(full) // 2])
        seen: list[tuple[int, int]] = []
        http_top = remote.fetch_disk(
            2, "root.qcow2", cache, lambda done, total: seen.append((done, total))
        )
        assert identical(image, http_top)
        assert seen and seen[-1][0] == seen[-1][1]
        # A corrupt partial download is detected, removed, and never enters the cache.
        base = disk["chain"][0]["sha256"]
        other = tmp_path / "cache3"
        (other / "objects" / ".partial").mkdir(parents=True)
        (other / "objects" / ".partial" / base).write_bytes(b"garbage")
        with pytest.raises(IntegrityError, match="corrupt"):
            remote.fetch_object(base, other)
        assert not (other / "objects" / ".partial" / base).exists()
        assert not list((other / "objects").glob("??/??/*"))


def test_resolver_reads_cvl_from_repository_directory_by_version(two_versions) -> None:
    repo, _ = two_versions
    resolver = make_resolver()
    text, version = resolver.fetch(repo.path.as_uri(), "DNS.cvl", None, None)
    assert version == "2" and "VMAppliance" in text
    assert resolver.fetch(repo.path.as_uri(), "DNS.cvl", "1", None)[1] == "1"


def test_failed_publish_leaves_nothing_visible(two_versions, tmp_path: Path, monkeypatch) -> None:
    repo, image = two_versions
    before = repo.git.get_refs()
    broken = tmp_path / "broken"
    cvl = sample_appliance(broken)
    (broken / "root.qcow2").unlink()
    with pytest.raises(InvalidAppliance, match="no such image"):
        publish(repo.path, cvl)

    def refuse(*args: object, **kwargs: object) -> None:
        raise ImmutableVersion("simulated failure after the objects were written")

    write_pattern(image, 0x78, "6M", "64k")
    monkeypatch.setattr("reposerver.publish.check_updates", refuse)
    with pytest.raises(ImmutableVersion, match="simulated"):
        publish(repo.path, image.parent / "DNS.cvl")
    assert Repository(repo.path).git.get_refs() == before
    assert repo.latest() == 2


def test_local_git_push_is_checked_by_installed_hooks(two_versions, tmp_path: Path) -> None:
    repo, image = two_versions
    work = tmp_path / "work"
    git("clone", "-q", str(repo.path), str(work), cwd=tmp_path)
    before = repo.git.get_refs()
    refused = git("push", "origin", ":refs/tags/v1", cwd=work, check=False)
    assert refused.returncode != 0 and "versions are immutable" in refused.stderr
    git("tag", "v3", cwd=work)
    refused = git("push", "origin", "v3", cwd=work, check=False)
    assert refused.returncode != 0 and "lightweight tag" in refused.stderr
    git("tag", "-d", "v3", cwd=work)
    assert Repository(repo.path).git.get_refs() == before
    (work / "DNS.cvl").write_text((work / "DNS.cvl").read_text() + "/* v3 */\n")
    shutil.copy(image, work / "root.qcow2")  # git-lfs stores it in repo/lfs/objects directly
    write_pattern(work / "root.qcow2", 0x79, "7M", "64k")
    git("commit", "-q", "-am", "v3", cwd=work)
    git("tag", "-a", "v3", "-m", "v3", cwd=work)
    accepted = git("push", "origin", "main", "v3", cwd=work)
    assert "accepted version v3" in accepted.stderr
    assert Repository(repo.path).latest() == 3
    top = open_repository(str(repo.path)).fetch_disk(3, "root.qcow2", tmp_path / "cache")
    assert identical(work / "root.qcow2", top)


def test_cli_create_publish_versions(tmp_path: Path) -> None:
    runner = CliRunner()
    repo = tmp_path / "repo"
    assert runner.invoke(cli, ["create", str(repo)]).exit_code == 0
    cvl = sample_appliance(tmp_path / "app")
    result = runner.invoke(cli, ["publish", str(repo), str(cvl)])
    assert result.exit_code == 0, result.output
    assert "published v1" in result.output and "a full copy would take" in result.output
    listing = runner.invoke(cli, ["versions", str(repo)])
    assert listing.exit_code == 0 and listing.output.startswith("v1")
    again = runner.invoke(cli, ["create", str(repo)])
    assert again.exit_code == 1 and "already exists" in again.output
    runner.invoke(cli, ["trust", str(repo), "--require-signed"])
    refused = runner.invoke(cli, ["publish", str(repo), str(cvl)])
    assert refused.exit_code == 1 and "requires signed versions" in refused.output
    token = runner.invoke(cli, ["token"])
    assert "token_sha256:" in token.output


def test_checks_refuse_unsafe_disk_reference(two_versions, tmp_path: Path) -> None:
    """A pushed qcow2 whose backing file is a host path never becomes a version."""
    repo, _ = two_versions
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "/etc/hostname",
            "-u",
            str(evil),
            "1M",
        ],
        check=True,
    )
    oid, size = repo.store.put_file(evil)
    from reposerver.lfs_pointer import Pointer

    with pytest.raises(InvalidAppliance, match="not a content-addressed reference"):
        checks._check_disk(repo, Pointer(oid, size).encode(), "v3:dns.xml: disk vda")


VAN = """CVL = "0.8";
import {{ url => "{url}", cvl => "DNS.cvl", version => "{version}" }} DNS;
Svc extends VANAppliance {{
  var "required" domain;
  DNS d;
  d.domain = domain;
  vanIF = "d.ethernet0";
}}
"""


def test_van_importing_a_repository_version_publishes_cvl_only(two_versions, tmp_path) -> None:
    dns, _ = two_versions
    van = Repository.create(tmp_path / "root" / "Svc")
    source = tmp_path / "svc" / "Svc.cvl"
    source.parent.mkdir()
    source.write_text(VAN.format(url=dns.path.as_uri(), version="9"))
    with pytest.raises(InvalidAppliance, match="Svc.cvl does not check"):
        publish(van.path, source)
    source.write_text(VAN.format(url=dns.path.as_uri(), version="2"))
    result = publish(van.path, source)
    assert result.version == 1 and result.disks == []
    assert sorted(van.files(1)) == ["Svc.cvl"]


def test_publish_takes_the_tagger_from_git_config_like_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("NAME", "EMAIL"):
        monkeypatch.delenv(f"GIT_COMMITTER_{var}", raising=False)
        monkeypatch.delenv(f"GIT_AUTHOR_{var}", raising=False)
    runner = CliRunner()
    repo = tmp_path / "repo"
    assert runner.invoke(cli, ["create", str(repo)]).exit_code == 0
    cvl = sample_appliance(tmp_path / "app")
    refused = runner.invoke(cli, ["publish", str(repo), str(cvl)])
    assert refused.exit_code == 1 and "git config --global user.name" in refused.output
    assert Repository(repo).latest() == 0
    subprocess.run(["git", "config", "--global", "user.name", "Ada Publisher"], check=True)
    subprocess.run(["git", "config", "--global", "user.email", "ada@example.org"], check=True)
    result = runner.invoke(cli, ["publish", str(repo), str(cvl)])
    assert result.exit_code == 0, result.output
    shown = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "tag", "v1"], capture_output=True, text=True
    )
    assert "\ntagger Ada Publisher <ada@example.org> " in shown.stdout
    monkeypatch.setenv("GIT_COMMITTER_NAME", "From Env")
    subprocess.run(["git", "-C", str(repo), "config", "user.email", "repo@example.org"], check=True)
    assert runner.invoke(cli, ["publish", str(repo), str(cvl)]).exit_code == 0
    shown = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "tag", "v2"], capture_output=True, text=True
    )
    assert "\ntagger From Env <repo@example.org> " in shown.stdout
