"""HTTP basic authentication against per-user tokens kept as sha256 digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from werkzeug.datastructures import Authorization


def token_digest(token: str) -> str:
    """The digest stored in the server config for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token for a user."""
    return secrets.token_urlsafe(32)


def authenticated_user(header: str | None, users: dict[str, str]) -> str | None:
    """The user an `Authorization: Basic ...` header proves, or None.

    Digests are compared with `hmac.compare_digest`, and a digest is computed even for an
    unknown user, so timing tells nothing about which users or tokens exist.
    """
    parsed = Authorization.from_header(header)
    if parsed is None or parsed.type != "basic":
        return None
    user, token = parsed.username, parsed.password
    if user is None or token is None:
        return None
    expected = users.get(user, "0" * 64)
    ok = hmac.compare_digest(token_digest(token), expected)
    return user if ok and user in users else None
