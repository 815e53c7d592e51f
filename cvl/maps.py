"""CVL maps as strings: `{a => "b", c => "d"}` is the string `a=b&c=d`.

The paper makes a map "just syntactic sugar for defining a string" whose non-alphanumeric
characters are escaped, "allowing for recursive map structures". Here that escaping is exact:
every byte of the UTF-8 key and value outside `A-Za-z0-9` is written `%XX` (upper-case hex), so
`=`, `&` and `%` never appear unescaped inside a pair and `decode` inverts `encode`. A nested map
is first encoded to its string, which is then escaped like any other value:
`{a => {b => "c d"}}` is `a=b%3Dc%2520d`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cvl.errors import CvlMapError

MAX_DEPTH = 32
"""Deepest map nesting the language accepts; deeper is an error, never a crash."""

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_TABLE = tuple(chr(b) if b in _SAFE else f"%{b:02X}" for b in range(256))
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def escape(text: str) -> str:
    """Escape one key or value: bytes outside A-Za-z0-9 become `%XX`."""
    if text.isascii() and text.isalnum():
        return text
    return "".join([_TABLE[b] for b in text.encode("utf-8", "surrogatepass")])


def unescape(text: str) -> str:
    """Invert `escape`; anything but `A-Za-z0-9` and `%XX` is an error."""
    stripped = _ESCAPE.sub("", text)
    if not (stripped == "" or (stripped.isascii() and stripped.isalnum())):
        raise CvlMapError(f"not an escaped map key or value: {text!r}")
    raw = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    try:
        return raw.encode("latin-1").decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise CvlMapError(f"escaped bytes are not UTF-8 in {text!r}") from exc


def encode(pairs: Iterable[tuple[str, str]]) -> str:
    """The map string of `pairs` in order: `key=value` joined by `&`, keys and values escaped."""
    return "&".join(f"{escape(key)}={escape(value)}" for key, value in pairs)


def decode(text: str) -> list[tuple[str, str]]:
    """The pairs of a map string, in order (the inverse of `encode`); "" is the empty map."""
    if text == "":
        return []
    pairs = []
    for part in text.split("&"):
        key, sep, value = part.partition("=")
        if not sep:
            raise CvlMapError(f"map pair without '=': {part!r} in {text!r}")
        pairs.append((unescape(key), unescape(value)))
    return pairs
