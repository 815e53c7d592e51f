"""Changing a repository's settings: trusted GPG keys, SSH signers, require-signed, subscribers."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from reposerver import repo_config
from reposerver.errors import BadRequest


def add_gpg_key(repo_path: Path, armored: str) -> Path:
    """Trust an armored GPG public key; return where it was stored."""
    if "BEGIN PGP PUBLIC KEY BLOCK" not in armored:
        raise BadRequest("not an armored GPG public key (gpg --armor --export KEYID)")
    directory = repo_config.gpg_key_dir(repo_path)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (hashlib.sha256(armored.encode()).hexdigest()[:16] + ".asc")
    tmp = target.with_suffix(".tmp")
    tmp.write_text(armored)
    os.replace(tmp, target)
    return target


def add_ssh_signer(repo_path: Path, line: str) -> None:
    """Append a `PRINCIPAL KEYTYPE KEY` line to the repository's allowed_signers."""
    if len(line.split()) < 3 or "\n" in line.strip():
        raise BadRequest("an SSH signer is one line: 'PRINCIPAL KEYTYPE BASE64KEY'")
    path = repo_config.allowed_signers_file(repo_path)
    existing = path.read_text() if path.exists() else ""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(existing + line.strip() + "\n")
    os.replace(tmp, path)


def set_require_signed(repo_path: Path, required: bool) -> None:
    """Turn the require-signed policy on or off."""
    config = repo_config.load(repo_path)
    repo_config.save(repo_path, dataclasses.replace(config, require_signed=required))


def add_subscriber(repo_path: Path, url: str, secret_env: str) -> None:
    """Add a subscriber whose HMAC secret is read from environment variable `secret_env`."""
    from urllib.parse import urlsplit

    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise BadRequest(f"subscriber URL {url!r} must be http:// or https://")
    if not secret_env.replace("_", "").isalnum():
        raise BadRequest(f"{secret_env!r} is not an environment variable name")
    config = repo_config.load(repo_path)
    subscriber = repo_config.Subscriber(url=url, secret_env=secret_env)
    subscribers = tuple(s for s in config.subscribers if s.url != url) + (subscriber,)
    repo_config.save(repo_path, dataclasses.replace(config, subscribers=subscribers))
