"""Every API field checked for type and range at the edge, so bad input is a 400 naming the field.

JSON gives Python values of any type and size: integers of any length, booleans (which are
`int`s), strings with NUL or lone surrogates ("\\ud800"), floats that are infinite. Each reader
here accepts exactly one shape and raises `UtilityError` (400) saying which field and what is
expected; none echoes a long hostile value back.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from utility.core.sizes import parse_size
from utility.errors import Conflict, UtilityError

MAX_REQUEST_BYTES = 16 << 20
MAX_TEXT = 4096
MAX_CVL_TEXT = 1 << 20
MAX_KEY_TEXT = 64 * 1024
MAX_INT = 1 << 31
MAX_MEMORY = 1 << 50  # 1 PiB
MAX_SECRETS = 256
MAX_PUBLIC_IPS = 65536
URL_SCHEMES = ("http", "https", "file")
FIELD_LIMITS = {"cvl": MAX_CVL_TEXT, "key": MAX_KEY_TEXT, "name": 64}


def clean_text(value: Any, name: str, limit: int = MAX_TEXT, allow_empty: bool = False) -> str:
    """`value` if it is a string of 1..limit characters without NUL or lone surrogates."""
    if not isinstance(value, str):
        raise UtilityError(f"field {name!r} must be a string")
    if (not value and not allow_empty) or len(value) > limit:
        raise UtilityError(f"field {name!r} must have 1 to {limit} characters")
    if "\x00" in value:
        raise UtilityError(f"field {name!r} must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UtilityError(f"field {name!r} contains a lone surrogate (not Unicode text)") from None
    return value


def text(data: dict[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    """The required string field `name` of `data` (limit: `FIELD_LIMITS`, else `limit`)."""
    if name not in data:
        raise UtilityError(f"field {name!r} is missing")
    return clean_text(data[name], name, FIELD_LIMITS.get(name, limit))


def optional_text(data: dict[str, Any], name: str, limit: int = MAX_TEXT) -> str | None:
    """The string field `name`, or None when absent or null."""
    value = data.get(name)
    return None if value is None else clean_text(value, name, limit)


def integer(data: dict[str, Any], name: str, low: int = 1, high: int = MAX_INT) -> int:
    """The integer field `name` in low..high (a boolean is not an integer)."""
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UtilityError(f"field {name!r} must be an integer")
    if not low <= value <= high:
        raise UtilityError(f"field {name!r} must be between {low} and {high}")
    return value


def boolean(data: dict[str, Any], name: str, default: bool = False) -> bool:
    """The boolean field `name` (absent: `default`); 0, 1 and strings are refused."""
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise UtilityError(f"field {name!r} must be true or false")
    return value


def seconds(data: dict[str, Any], name: str, high: float = 86400.0) -> float | None:
    """The optional finite number of seconds `name` in 0..high (absent or null: None)."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UtilityError(f"field {name!r} must be a number of seconds")
    if not math.isfinite(value) or not 0 <= value <= high:
        raise UtilityError(f"field {name!r} must be between 0 and {high:.0f} seconds")
    return float(value)


def memory(data: dict[str, Any], name: str = "memory") -> int:
    """A size field: "4G" or a number of bytes, positive and at most 1 PiB."""
    value = data.get(name)
    if isinstance(value, str):
        value = parse_size(clean_text(value, name, 64), f"field {name!r}")
    elif isinstance(value, bool) or not isinstance(value, int):
        raise UtilityError(f'field {name!r} is missing or not a size (e.g. "4G")')
    if not 1 <= value <= MAX_MEMORY:
        raise UtilityError(f"field {name!r} must be between 1 byte and 1 PiB")
    return int(value)


def url(data: dict[str, Any], name: str, required: bool = True) -> str | None:
    """An http(s) or file URL field (None when optional and absent)."""
    value = text(data, name) if required else optional_text(data, name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in URL_SCHEMES or (parts.scheme != "file" and not parts.netloc):
        raise UtilityError(f"field {name!r} must be an http(s):// or file: URL")
    return value


def string_map(data: dict[str, Any], name: str) -> dict[str, str]:
    """A map of strings to strings (absent: empty), at most `MAX_SECRETS` entries."""
    value = data.get(name) or {}
    if not isinstance(value, dict) or len(value) > MAX_SECRETS:
        raise UtilityError(f"field {name!r} must map at most {MAX_SECRETS} keys to strings")
    checked: dict[str, str] = {}
    for key, item in value.items():
        key = clean_text(key, f"{name} key")
        checked[key] = clean_text(item, f"{name}[{key!r}]", MAX_KEY_TEXT, allow_empty=True)
    return checked


def host_address(uri: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a host URI names literally (None for a name, a socket or no host)."""
    try:
        return ipaddress.IPv4Address(urlsplit(uri).hostname or "")
    except ValueError:
        return None


def check_new_host_uri(uri: str, existing: Iterable[str]) -> None:
    """Refuse a host URI already registered (the same libvirt would be counted twice)."""
    if uri in set(existing):
        raise Conflict(f"field 'uri': a host with URI {uri!r} is already registered")


def check_public_ips(
    items: list[str], address_base: str, host_uris: Iterable[str], pool_size: int
) -> None:
    """Refuse public IPs the utility cannot hand to a guest.

    Inside the VAN address base, loopback, multicast, broadcast, unspecified, link-local or
    reserved, or already a host's address; and a pool over `MAX_PUBLIC_IPS` addresses.
    """
    base = ipaddress.IPv4Network(address_base)
    hosts = {a for a in map(host_address, host_uris) if a is not None}
    if pool_size + len(items) > MAX_PUBLIC_IPS:
        raise UtilityError(f"field 'range': the public IP pool holds at most {MAX_PUBLIC_IPS}")
    for item in items:
        ip = ipaddress.IPv4Address(item)
        reason = (
            f"inside the VAN address base {base}" if ip in base
            else "loopback" if ip.is_loopback
            else "multicast" if ip.is_multicast
            else "broadcast" if ip == ipaddress.IPv4Address("255.255.255.255")
            else "unspecified" if ip.is_unspecified
            else "link-local" if ip.is_link_local
            else "reserved" if ip.is_reserved
            else "a registered host's address" if ip in hosts
            else None
        )  # fmt: skip
        if reason:
            raise UtilityError(f"field 'range': {ip} is {reason}, not a public address to give")
