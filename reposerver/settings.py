"""Server configuration: where repositories live, who may write, who hears about new versions.

`create_app(config)` takes a dict; without one, the JSON file named by
`COLLECTIVE_REPOSERVER_CONFIG` is read, and `COLLECTIVE_REPOSERVER_ROOT` overrides `root`.
Keys: `root` (directory of repositories), `users` ({name: {"token_sha256": HEX}}: tokens are
kept only as sha256 digests; make one with `cui token`), `read_protected` (reads need
credentials too), `subscribers` (like a repository's), `public_url` (base URL in events),
`max_upload_bytes`, `delivery_delays` (seconds between retries), `staging_ttl_seconds` (how
long an LFS upload no accepted push referenced is kept in staging; default 24 h),
`subscriber_suspend_after_seconds` (a subscriber that only failed for this long is suspended;
default 24 h, see `reposerver.subscriber_health`).

Security keys (README "Threat model"): `allowed_import_origins` (http(s) origins pushed CVL may
import from besides this server's own repositories; default none), `import_timeout_seconds`,
`trusted_hosts` (Host header values events may name the server by when `public_url` is unset),
`allowed_subscriber_networks` (CIDRs of otherwise refused subscriber addresses, e.g.
`["127.0.0.0/8", "::1/128"]` for tests on loopback; default none), `max_push_bytes` (largest
git request body, chunked or not).
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reposerver.errors import BadRequest
from reposerver.events import DEFAULT_DELAYS
from reposerver.objects import DEFAULT_STAGING_TTL
from reposerver.repo_config import Subscriber, parse_subscribers
from reposerver.subscriber_health import DEFAULT_SUSPEND_AFTER

CONFIG_ENV = "COLLECTIVE_REPOSERVER_CONFIG"
ROOT_ENV = "COLLECTIVE_REPOSERVER_ROOT"
DEFAULT_MAX_UPLOAD = 64 << 30
DEFAULT_MAX_PUSH = 1 << 30


@dataclass(frozen=True)
class ServerSettings:
    """Validated server configuration."""

    root: Path
    users: dict[str, str] = field(default_factory=dict)
    read_protected: bool = False
    subscribers: tuple[Subscriber, ...] = ()
    public_url: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    delivery_delays: tuple[float, ...] = DEFAULT_DELAYS
    staging_ttl_seconds: float = DEFAULT_STAGING_TTL
    allowed_import_origins: tuple[str, ...] = ()
    import_timeout_seconds: float = 10.0
    trusted_hosts: tuple[str, ...] = ()
    allowed_subscriber_networks: tuple[str, ...] = ()
    max_push_bytes: int = DEFAULT_MAX_PUSH
    subscriber_suspend_after_seconds: float = DEFAULT_SUSPEND_AFTER


def _strings(config: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{where}: {key} must be a list of strings")
    return tuple(value)


def _networks(config: dict[str, Any], where: str) -> tuple[str, ...]:
    found = _strings(config, "allowed_subscriber_networks", where)
    for value in found:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise BadRequest(
                f"{where}: allowed_subscriber_networks: {value!r} is not a network (CIDR)"
            ) from None
    return found


def load_settings(config: dict[str, Any] | None = None) -> ServerSettings:
    """Build settings from `config`, or from the environment when `config` is None."""
    where = "server config"
    if config is None:
        config = {}
        path = os.environ.get(CONFIG_ENV)
        if path:
            where = path
            try:
                config = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise BadRequest(f"{path}: cannot read server config: {exc}") from None
        if os.environ.get(ROOT_ENV):
            config = {**config, "root": os.environ[ROOT_ENV]}
    if not isinstance(config, dict) or not config.get("root"):
        raise BadRequest(f"{where}: 'root' (the directory of repositories) is required")
    root = Path(config["root"])
    if not root.is_dir():
        raise BadRequest(f"{where}: root {root} is not a directory")
    users = {}
    for name, entry in (config.get("users") or {}).items():
        digest = entry.get("token_sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or len(digest) != 64:
            raise BadRequest(f"{where}: users.{name} needs 'token_sha256' (64 hex digits)")
        users[str(name)] = digest.lower()
    try:
        ttl = float(config.get("staging_ttl_seconds", DEFAULT_STAGING_TTL))
    except (TypeError, ValueError):
        ttl = -1.0
    if not ttl >= 0:
        raise BadRequest(f"{where}: staging_ttl_seconds must be a non-negative number of seconds")
    suspend_after = config.get("subscriber_suspend_after_seconds", DEFAULT_SUSPEND_AFTER)
    if isinstance(suspend_after, bool) or not isinstance(suspend_after, int | float):
        suspend_after = -1.0
    if not 0 <= suspend_after < float("inf"):
        raise BadRequest(
            f"{where}: subscriber_suspend_after_seconds must be a non-negative number of seconds"
        )
    return ServerSettings(
        root=root,
        users=users,
        read_protected=bool(config.get("read_protected", False)),
        subscribers=parse_subscribers(config.get("subscribers", []), where),
        public_url=config.get("public_url"),
        max_upload_bytes=int(config.get("max_upload_bytes", DEFAULT_MAX_UPLOAD)),
        delivery_delays=tuple(float(d) for d in config.get("delivery_delays", DEFAULT_DELAYS)),
        staging_ttl_seconds=ttl,
        allowed_import_origins=_strings(config, "allowed_import_origins", where),
        import_timeout_seconds=float(config.get("import_timeout_seconds", 10.0)),
        trusted_hosts=tuple(h.lower() for h in _strings(config, "trusted_hosts", where)),
        allowed_subscriber_networks=_networks(config, where),
        max_push_bytes=int(config.get("max_push_bytes", DEFAULT_MAX_PUSH)),
        subscriber_suspend_after_seconds=float(suspend_after),
    )
