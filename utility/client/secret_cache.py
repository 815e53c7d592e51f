"""The user's secret cache: sensitive parameter values, encrypted at rest (paper, "sensitive").

The paper calls this the user agent; the command keeps that name (`cui agent …`), and so do
the file (`agent.enc`) and `$COLLECTIVE_AGENT_*`, so existing caches and scripts keep working.
In code it is the secret cache, because "agent" elsewhere means the guest agent.

The cache file holds one JSON object encrypted with ChaCha20-Poly1305 under a key derived from
the user's password with scrypt (n=2**15, r=8, p=1, fresh 16-byte salt and 12-byte nonce on
every save). Nothing is ever written in clear. Keys are `<absolute CVL path>#<parameter key>`
(e.g. `/home/u/acme/AcmeGroupware.cvl#l.rootpw`), so two VAPs never share a value by accident.

`cui start` asks the cache for every sensitive parameter of the VAP that has no value in the
CVL; a missing value is taken from `$COLLECTIVE_SECRET_<KEY>` (key upper-cased, other characters
as `_`), else prompted for (hidden) on a terminal, else read as one line from stdin; it is then
cached. The password comes from `$COLLECTIVE_AGENT_PASSWORD` or a prompt.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from utility.errors import SecretCacheError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
FORMAT = "collective-agent-1"


def default_path() -> Path:
    """`$COLLECTIVE_AGENT_FILE`, else `~/.config/collective/agent.enc`."""
    env = os.environ.get("COLLECTIVE_AGENT_FILE")
    return Path(env) if env else Path.home() / ".config" / "collective" / "agent.enc"


def _key(password: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(
        password.encode()
    )


def env_name(key: str) -> str:
    """The environment variable that may supply `key` (its parameter part)."""
    param = key.rpartition("#")[2]
    return "COLLECTIVE_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", param).upper()


class SecretCache:
    """An open cache: decrypted in memory, re-encrypted on `save`.

    Args:
        path: the encrypted file (need not exist yet).
        password: the user's password.

    Raises:
        SecretCacheError: the file exists but the password is wrong or the file was altered.
    """

    def __init__(self, path: Path, password: str) -> None:
        if not password:
            raise SecretCacheError("the agent password must not be empty")
        self.path = path
        self._password = password
        self._values: dict[str, str] = {}
        if path.exists():
            self._values = self._decrypt(path.read_bytes())

    def _decrypt(self, blob: bytes) -> dict[str, str]:
        try:
            outer = json.loads(blob)
            if outer.get("format") != FORMAT:
                raise ValueError("unknown format")
            salt = base64.b64decode(outer["salt"])
            nonce = base64.b64decode(outer["nonce"])
            sealed = base64.b64decode(outer["data"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SecretCacheError(f"{self.path}: not an agent cache file ({exc})") from None
        try:
            plain = ChaCha20Poly1305(_key(self._password, salt)).decrypt(
                nonce, sealed, FORMAT.encode()
            )
        except InvalidTag:
            raise SecretCacheError(
                f"{self.path}: wrong password, or the file was altered"
            ) from None
        values = json.loads(plain)
        return {str(k): str(v) for k, v in values.items()}

    def save(self) -> None:
        """Encrypt and write atomically (temporary file, then rename), mode 0600."""
        salt, nonce = os.urandom(16), os.urandom(12)
        sealed = ChaCha20Poly1305(_key(self._password, salt)).encrypt(
            nonce, json.dumps(self._values, sort_keys=True).encode(), FORMAT.encode()
        )
        blob = json.dumps(
            {
                "format": FORMAT,
                "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
                "cipher": "chacha20-poly1305",
                "salt": base64.b64encode(salt).decode(),
                "nonce": base64.b64encode(nonce).decode(),
                "data": base64.b64encode(sealed).decode(),
            }
        ).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def get(self, key: str) -> str | None:
        """The cached value, or None."""
        return self._values.get(key)

    def set(self, key: str, value: str) -> None:
        """Cache a value (call `save` to persist)."""
        self._values[key] = value

    def forget(self, key: str) -> bool:
        """Drop a value; False if it was not cached."""
        return self._values.pop(key, None) is not None

    def keys(self) -> list[str]:
        """Cached keys (never values)."""
        return sorted(self._values)


def cache_key(cvl_path: Path, param_key: str) -> str:
    """The cache key of a sensitive parameter of a VAP."""
    return f"{cvl_path.resolve()}#{param_key}"


def obtain(
    cache: SecretCache,
    cvl_path: Path,
    param_keys: Iterable[str],
    ask: Callable[[str], str],
) -> dict[str, str]:
    """Values for `param_keys`: cached, else from the environment, else `ask(key)`; cached after.

    Returns:
        parameter key -> value, to send with the start request (never written in clear).
    """
    values: dict[str, str] = {}
    changed = False
    for param in param_keys:
        key = cache_key(cvl_path, param)
        value = cache.get(key)
        if value is None:
            value = os.environ.get(env_name(key))
            if value is None:
                value = ask(param)
            if not value:
                raise SecretCacheError(f"no value given for sensitive parameter {param}")
            cache.set(key, value)
            changed = True
        values[param] = value
    if changed:
        cache.save()
    return values
