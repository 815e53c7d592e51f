"""Human sizes ("100mb", "4GiB", "512M", "1048576") to bytes, and back for display.

CVL data disks (`size=100mb`) and `cui host add --memory 4G` use the same spelling, so both go
through `parse_size`. Units are binary (the paper's "100mb" disk is 100 MiB), case-insensitive.
"""

from __future__ import annotations

import re

from utility.errors import UtilityError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str, what: str = "size") -> int:
    """Return the number of bytes `text` denotes.

    Args:
        text: a number with an optional unit: b, k/kb/kib, m/mb/mib, g/gb/gib, t/tb/tib.
        what: names the value in the error message (e.g. "d.datadisks size").

    Raises:
        UtilityError: the text is not a size; the message quotes it and says what was expected.
    """
    match = _SIZE.match(text)
    if not match:
        raise UtilityError(f"{what}: {text!r} is not a size (expected e.g. 100mb, 4GiB, 512M)")
    number, unit = match.groups()
    value = int(float(number) * _UNITS[unit.lower()])
    if value <= 0:
        raise UtilityError(f"{what}: {text!r} must be greater than zero")
    return value


def format_size(value: int) -> str:
    """Render bytes compactly with a binary unit (e.g. 1.5GiB, 100MiB, 512B)."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            number = value / scale
            return f"{number:.0f}{unit}" if number == int(number) else f"{number:.1f}{unit}"
    return f"{value}B"
