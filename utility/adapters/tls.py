"""Transport rules for a network: TLS, and bearer tokens only over TLS or loopback.

- `check_listen`: the daemon refuses a plain-TCP listener on anything but a loopback address
  (tokens would cross the network in clear); with `--tls-cert/--tls-key` any address is fine.
- `client_context` / `check_token_transport`: the client speaks https verifying the server
  against a CA file (`--ca-file`, `$COLLECTIVE_CA`, else the system store), and refuses to send a
  token over plain http to a host that is not loopback.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path

from utility.errors import UtilityError

CA_ENV = "COLLECTIVE_CA"


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name, IPv6 possibly in brackets) is loopback.

    Only literal loopback addresses and the name `localhost` count: another name may resolve
    anywhere, so it is treated as remote.
    """
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (HOST defaults to 127.0.0.1; `[::1]:PORT` for IPv6) as (host, port)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise UtilityError(f"--listen {listen!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_listen(host: str, cert: Path | None, key: Path | None) -> None:
    """Refuse a TCP listener that would carry tokens in clear over a network, or half a TLS
    configuration; the certificate and key must be readable files."""
    if (cert is None) != (key is None):
        raise UtilityError("--tls-cert and --tls-key go together")
    if cert is None:
        if not is_loopback(host):
            raise UtilityError(
                f"--listen {host}: plain TCP is only for loopback addresses (bearer tokens "
                "would cross the network in clear); give --tls-cert and --tls-key"
            )
        return
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is None or not path.is_file() or not os.access(path, os.R_OK):
            raise UtilityError(f"{option} {path}: not a readable file")


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying TLS context: `ca_file`, else `$COLLECTIVE_CA`, else the system's CAs."""
    ca = ca_file or os.environ.get(CA_ENV)
    try:
        return ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise UtilityError(f"CA file {ca}: {exc}") from None


def check_token_transport(scheme: str, host: str, has_token: bool) -> None:
    """Refuse to send a bearer token over plain http to a host that is not loopback."""
    if has_token and scheme == "http" and not is_loopback(host):
        raise UtilityError(
            f"refusing to send a bearer token over plain http to {host}: use "
            "https://HOST:PORT (the daemon with --tls-cert/--tls-key) or a loopback address"
        )
