"""A repository's own settings: trust policy for signed tags and subscribers of publish events.

Stored as `collective.json` in the bare repository; trusted keys live beside it in
`trust/gpg/*.asc` (armored public keys) and `trust/allowed_signers` (ssh-keygen format).
Subscriber HMAC secrets are named by environment variable (`secret_env`) so they need not sit
on disk in clear; an inline `secret` is accepted for development. Subscribers registered over
HTTP (`POST /NAME/subscribers`, see `reposerver.web`) keep their secret in `secret_file`, a file
under `secrets/` readable only by the server's user (0600): the server must sign every event
with it, so it is a credential of the server like its TLS key, never written to
`collective.json`, to logs, or to answers other than the one that created it.
"""

from __future__ import annotations

import json
import os
import secrets as secret_source
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from reposerver.errors import BadRequest

CONFIG_FILE = "collective.json"
SECRETS_DIR = "secrets"


@dataclass(frozen=True)
class Subscriber:
    """An HTTP endpoint that receives publish events, and how to find its HMAC secret."""

    url: str
    secret_env: str | None = None
    secret: str | None = None
    secret_file: str | None = None

    def resolve_secret(self) -> bytes:
        """The shared secret as bytes (from the environment when `secret_env` is set, from
        `secret_file` — absolute once loaded — when the subscriber registered over HTTP)."""
        if self.secret_file:
            try:
                return Path(self.secret_file).read_bytes().strip()
            except OSError as exc:
                raise BadRequest(f"subscriber {self.url}: cannot read its secret: {exc}") from None
        if self.secret_env:
            value = os.environ.get(self.secret_env)
            if value is None:
                raise BadRequest(
                    f"subscriber {self.url}: environment variable {self.secret_env} unset"
                )
            return value.encode()
        return (self.secret or "").encode()


@dataclass(frozen=True)
class RepoConfig:
    """Trust policy and subscribers of one repository."""

    require_signed: bool = False
    subscribers: tuple[Subscriber, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, object]:
        """The JSON form written to `collective.json`."""
        return {
            "require_signed": self.require_signed,
            "subscribers": [
                {k: v for k, v in asdict(s).items() if v is not None} for s in self.subscribers
            ],
        }


def parse_subscribers(
    items: object, where: str, base: Path | None = None
) -> tuple[Subscriber, ...]:
    """Parse a JSON list of subscriber objects (`secret_file` relative to `base`)."""
    if not isinstance(items, list):
        raise BadRequest(f"{where}: 'subscribers' must be a list")
    result = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise BadRequest(f"{where}: subscribers[{i}] needs a 'url' string")
        secret_file = item.get("secret_file")
        if secret_file is not None:
            if not isinstance(secret_file, str) or base is None or "/" not in secret_file:
                raise BadRequest(f"{where}: subscribers[{i}].secret_file must be secrets/NAME")
            secret_file = str(Path(base) / secret_file)
        result.append(
            Subscriber(
                url=item["url"],
                secret_env=item.get("secret_env"),
                secret=item.get("secret"),
                secret_file=secret_file,
            )
        )
    return tuple(result)


def load(repo_path: Path) -> RepoConfig:
    """Read `collective.json` of the repository at `repo_path` (defaults when absent)."""
    path = Path(repo_path) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return RepoConfig()
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{path}: expected a JSON object")
    return RepoConfig(
        require_signed=bool(data.get("require_signed", False)),
        subscribers=parse_subscribers(data.get("subscribers", []), str(path), Path(repo_path)),
    )


def save(repo_path: Path, config: RepoConfig) -> None:
    """Write `collective.json` atomically (secret files named relative to the repository)."""
    path = Path(repo_path) / CONFIG_FILE
    relative = tuple(
        replace(s, secret_file=os.path.relpath(s.secret_file, repo_path)) if s.secret_file else s
        for s in config.subscribers
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(replace(config, subscribers=relative).to_json(), indent=2) + "\n")
    os.replace(tmp, path)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable by the owner only (0600 from creation)."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def subscribe(repo_path: Path, url: str, secret: str | None = None) -> tuple[Subscriber, str]:
    """Add (or replace) the subscriber at `url`; return it and its HMAC secret.

    The caller holds the repository lock. A secret of at least 16 characters may be given;
    otherwise 256 random bits are generated. The secret goes to `secrets/<random>` (0600)
    before `collective.json` names it, so a crash leaves at worst an unused secret file.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest(f"subscriber URL {url!r} must be http:// or https://")
    if secret is not None and (
        len(secret) < 16 or not secret.isprintable() or secret != secret.strip()
    ):
        raise BadRequest("a given subscriber secret needs 16 or more printable characters")
    value = secret if secret is not None else secret_source.token_urlsafe(32)
    config = load(repo_path)
    target = Path(repo_path) / SECRETS_DIR / ("subscriber-" + secret_source.token_hex(8))
    _write_private(target, value.encode())
    subscriber = Subscriber(url=url, secret_file=str(target))
    old = [s for s in config.subscribers if s.url == url]
    kept = tuple(s for s in config.subscribers if s.url != url)
    save(repo_path, replace(config, subscribers=kept + (subscriber,)))
    _drop_secret_files(old)
    return subscriber, value


def unsubscribe(repo_path: Path, url: str) -> bool:
    """Remove the subscriber at `url` (and its secret file); False when there was none."""
    config = load(repo_path)
    old = [s for s in config.subscribers if s.url == url]
    if not old:
        return False
    kept = tuple(s for s in config.subscribers if s.url != url)
    save(repo_path, replace(config, subscribers=kept))
    _drop_secret_files(old)
    return True


def _drop_secret_files(subscribers: list[Subscriber]) -> None:
    for sub in subscribers:
        if sub.secret_file:
            Path(sub.secret_file).unlink(missing_ok=True)


def gpg_key_dir(repo_path: Path) -> Path:
    """Directory of trusted armored GPG public keys."""
    return Path(repo_path) / "trust" / "gpg"


def allowed_signers_file(repo_path: Path) -> Path:
    """The ssh-keygen allowed_signers file of trusted SSH signing keys."""
    return Path(repo_path) / "trust" / "allowed_signers"
