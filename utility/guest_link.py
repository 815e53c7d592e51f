"""Adapter over `utility.channel` (the guest-image teammate's host side of the serial protocol).

Kept to two functions so the executor does not depend on the channel's construction details.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from utility.errors import GuestChannelError


def _channel(socket_path: str):  # type: ignore[no-untyped-def]
    try:
        from utility.channel import GuestChannel
    except ImportError as exc:
        raise GuestChannelError(f"guest channel unavailable: {exc}") from None
    return GuestChannel(Path(socket_path))


def deliver(socket_path: str, params: Mapping[str, Sequence[str]], timeout: float) -> None:
    """Wait for the guest's HELLO, send PARAMS, wait for READY (GuestChannelError otherwise)."""
    channel = _channel(socket_path)
    try:
        channel.deliver(params, timeout)
    finally:
        channel.close()


def resend(socket_path: str, params: Mapping[str, Sequence[str]], timeout: float) -> None:
    """Send PARAMS to a running guest and wait for READY again."""
    channel = _channel(socket_path)
    try:
        channel.resend(params, timeout)
    finally:
        channel.close()
