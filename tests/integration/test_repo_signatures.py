"""Signed versions: GPG and SSH tags made by real gpg/ssh-keygen/git, verified by the repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from reposerver.errors import SignatureRefused
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server, sample_appliance, write_pattern
from reposerver.trust import add_gpg_key, add_ssh_signer, set_require_signed

pytestmark = pytest.mark.slow


BOUND_V2 = "v2\n\nCollective-Repository: DNS\nCollective-Appliance: DNS\n"
"""A stock `git tag -s` message bound to repository DNS, appliance DNS (README)."""


def run(
    *args: str, cwd: Path | None = None, check: bool = True, **kw
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args),
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        **kw,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def gpg_keys():
    """Two fresh GPG signing keys (no passphrase) in the test's own GNUPGHOME."""
    fingerprints = []
    for name in ("Trusted Publisher", "Stranger"):
        run(
            "gpg",
            "--batch",
            "--gen-key",
            input=(
                "%no-protection\nKey-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\n"
                f"Name-Real: {name}\nName-Email: {name.split()[0].lower()}@example.org\n"
                "Expire-Date: 0\n%commit\n"
            ),
        )
        listing = run(
            "gpg",
            "--batch",
            "--with-colons",
            "--list-secret-keys",
            f"{name.split()[0].lower()}@example.org",
        ).stdout
        fingerprints.append(
            next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
        )
    yield fingerprints
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], capture_output=True)


def ssh_key(path: Path, comment: str) -> str:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))
    kind, key, *_ = (
        (path.with_suffix(".pub") if path.suffix else Path(str(path) + ".pub")).read_text().split()
    )
    return f"{comment} {kind} {key}"


@pytest.fixture
def signed_repo(tmp_path: Path) -> tuple[Repository, Path]:
    repo = Repository.create(tmp_path / "root" / "DNS")
    set_require_signed(repo.path, True)
    return repo, sample_appliance(tmp_path / "app")


def test_gpg_signed_versions_verify_and_untrusted_or_unsigned_are_refused(
    signed_repo, gpg_keys, tmp_path
):
    repo, cvl = signed_repo
    trusted, stranger = gpg_keys
    add_gpg_key(repo.path, run("gpg", "--armor", "--export", trusted).stdout)
    with pytest.raises(SignatureRefused, match="requires signed versions: tag is not signed"):
        publish(repo.path, cvl)
    with pytest.raises(SignatureRefused, match="does not trust"):
        publish(repo.path, cvl, sign=stranger)
    assert repo.latest() == 0, "refused publishes leave no version"
    result = publish(repo.path, cvl, sign=trusted)
    info = repo.version(result.version)
    assert info.signed and info.signer and trusted in info.signer
    # Stock git verifies the tag cui made.
    assert "Good signature" in run("git", "tag", "-v", "v1", cwd=repo.path).stderr

    # And a tag made by stock `git tag -s` and pushed over HTTP is verified by the server.
    with running_server(repo.path.parent) as server:
        work = tmp_path / "work"
        run("git", "clone", "-q", server.url + "/DNS.git", str(work))
        run("git", "config", "lfs.locksverify", "false", cwd=work)
        write_pattern(work / "root.qcow2", 0x44, "1M", "64k")
        run("git", "commit", "-q", "-am", "v2", cwd=work)
        run("git", "tag", "-s", "-u", stranger, "-m", BOUND_V2, "v2", cwd=work)
        refused = run("git", "push", server.push_url("DNS"), "main", "v2", cwd=work, check=False)
        assert refused.returncode != 0 and "does not trust" in refused.stderr
        run("git", "tag", "-d", "v2", cwd=work)
        run("git", "tag", "-s", "-u", trusted, "-m", BOUND_V2, "v2", cwd=work)
        run("git", "push", server.push_url("DNS"), "main", "v2", cwd=work)
        versions = requests.get(server.url + "/DNS/").json()["versions"]
    assert [v["signed"] for v in versions] == [True, True]
    assert trusted in versions[1]["signer"]


def test_ssh_signed_versions_verify_and_untrusted_is_refused(signed_repo, tmp_path):
    repo, cvl = signed_repo
    trusted_key, stranger_key = tmp_path / "trusted", tmp_path / "stranger"
    add_ssh_signer(repo.path, ssh_key(trusted_key, "publisher@example.org"))
    ssh_key(stranger_key, "stranger@example.org")
    with pytest.raises(SignatureRefused, match="does not trust"):
        publish(repo.path, cvl, sign=str(stranger_key))
    publish(repo.path, cvl, sign=str(trusted_key))
    assert repo.version(1).signer == "publisher@example.org (ssh)"
    signers = repo.path / "trust" / "allowed_signers"
    verified = run(
        "git", "-c", f"gpg.ssh.allowedSignersFile={signers}", "tag", "-v", "v1", cwd=repo.path
    )
    assert 'Good "git" signature for publisher@example.org' in verified.stderr

    # git's own ssh signing (gpg.format=ssh) through a push.
    with running_server(repo.path.parent) as server:
        work = tmp_path / "work"
        run("git", "clone", "-q", server.url + "/DNS.git", str(work))
        run("git", "config", "lfs.locksverify", "false", cwd=work)
        (work / "DNS.cvl").write_text((work / "DNS.cvl").read_text() + "/* v2 */\n")
        run("git", "commit", "-q", "-am", "v2", cwd=work)
        run(
            "git",
            "-c",
            "gpg.format=ssh",
            "-c",
            f"user.signingkey={trusted_key}",
            "tag",
            "-s",
            "-m",
            BOUND_V2,
            "v2",
            cwd=work,
        )
        run("git", "push", server.push_url("DNS"), "main", "v2", cwd=work)
    assert repo.version(2).signer == "publisher@example.org (ssh)"


def test_tampered_signed_tag_is_not_trusted(signed_repo, tmp_path):
    repo, cvl = signed_repo
    key = tmp_path / "k"
    add_ssh_signer(repo.path, ssh_key(key, "publisher@example.org"))
    publish(repo.path, cvl, sign=str(key))
    from reposerver.signatures import verify

    raw = repo.raw_tag(1)
    assert verify(repo.path, raw).signer is not None
    tampered = raw.replace(b"Version 1", b"Version 9")
    status = verify(repo.path, tampered)
    assert status.signed and status.signer is None and "does not verify" in (status.problem or "")
