"""A repository's own settings: trust policy for signed tags and subscribers of publish events.

Stored as `collective.json` in the bare repository; trusted keys live beside it in
`trust/gpg/*.asc` (armored public keys) and `trust/allowed_signers` (ssh-keygen format).
Subscriber HMAC secrets are named by environment variable (`secret_env`) so they need not sit
on disk in clear; an inline `secret` is accepted for development.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reposerver.errors import BadRequest

CONFIG_FILE = "collective.json"


@dataclass(frozen=True)
class Subscriber:
    """An HTTP endpoint that receives publish events, and how to find its HMAC secret."""

    url: str
    secret_env: str | None = None
    secret: str | None = None

    def resolve_secret(self) -> bytes:
        """The shared secret as bytes (from the environment when `secret_env` is set)."""
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


def parse_subscribers(items: object, where: str) -> tuple[Subscriber, ...]:
    """Parse a JSON list of subscriber objects."""
    if not isinstance(items, list):
        raise BadRequest(f"{where}: 'subscribers' must be a list")
    result = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise BadRequest(f"{where}: subscribers[{i}] needs a 'url' string")
        result.append(
            Subscriber(
                url=item["url"], secret_env=item.get("secret_env"), secret=item.get("secret")
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
        subscribers=parse_subscribers(data.get("subscribers", []), str(path)),
    )


def save(repo_path: Path, config: RepoConfig) -> None:
    """Write `collective.json` atomically."""
    path = Path(repo_path) / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


def gpg_key_dir(repo_path: Path) -> Path:
    """Directory of trusted armored GPG public keys."""
    return Path(repo_path) / "trust" / "gpg"


def allowed_signers_file(repo_path: Path) -> Path:
    """The ssh-keygen allowed_signers file of trusted SSH signing keys."""
    return Path(repo_path) / "trust" / "allowed_signers"
