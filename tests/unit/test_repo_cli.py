"""`cui` repository commands that need no disk images: create, trust, subscribe, token, errors."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cui.main import cli
from reposerver import repo_config


def test_create_trust_subscribe(tmp_path: Path) -> None:
    runner = CliRunner()
    repo = tmp_path / "DNS"
    assert runner.invoke(cli, ["create", str(repo)]).exit_code == 0
    assert (repo / "hooks" / "pre-receive").stat().st_mode & 0o111
    assert "-m hooks.pre_receive" in (repo / "hooks" / "pre-receive").read_text()
    assert runner.invoke(cli, ["trust", str(repo), "--require-signed"]).exit_code == 0
    assert repo_config.load(repo).require_signed
    added = runner.invoke(cli, ["trust", str(repo), "--ssh-signer", "me@x ssh-ed25519 AAAAC3"])
    assert added.exit_code == 0
    assert (repo / "trust" / "allowed_signers").read_text() == "me@x ssh-ed25519 AAAAC3\n"
    ok = runner.invoke(cli, ["subscribe", str(repo), "http://h/hook", "--secret-env", "HOOK_KEY"])
    assert ok.exit_code == 0, ok.output
    saved = json.loads((repo / "collective.json").read_text())
    assert saved["subscribers"] == [{"url": "http://h/hook", "secret_env": "HOOK_KEY"}]
    assert "secret" not in json.dumps(saved).replace("secret_env", "")
    bad = runner.invoke(cli, ["subscribe", str(repo), "ftp://h", "--secret-env", "K"])
    assert bad.exit_code == 1 and "must be http" in bad.output
    key = tmp_path / "k.asc"
    key.write_text("not a key")
    refused = runner.invoke(cli, ["trust", str(repo), "--gpg-key", str(key)])
    assert refused.exit_code == 1 and "armored GPG public key" in refused.output


def test_create_refuses_existing_directory_and_versions_of_empty_repo(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = runner.invoke(cli, ["create", str(tmp_path / "full")])
    assert result.exit_code == 1 and "already exists" in result.output
    assert runner.invoke(cli, ["create", str(tmp_path / "empty")]).exit_code == 0
    listing = runner.invoke(cli, ["versions", str(tmp_path / "empty"), "--json"])
    assert listing.exit_code == 0 and json.loads(listing.output) == []
    missing = runner.invoke(cli, ["versions", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "not an appliance repository" in missing.output


def test_token_prints_digest_matching_token() -> None:
    from reposerver.auth import token_digest

    out = CliRunner().invoke(cli, ["token"]).output.split()
    token, digest = out[out.index("token:") + 1], out[out.index("token_sha256:") + 1]
    assert token_digest(token) == digest
