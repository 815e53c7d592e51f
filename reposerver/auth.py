"""HTTP basic authentication against per-user tokens kept as sha256 digests."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets


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
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, sep, token = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not sep:
        return None
    expected = users.get(user, "0" * 64)
    ok = hmac.compare_digest(token_digest(token), expected)
    return user if ok and user in users else None
