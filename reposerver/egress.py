"""Where the server may send publish events: subscriber URLs checked against internal addresses.

A subscriber URL is chosen by whoever holds a write token, so it must not turn the server into a
proxy for its own loopback, the link-local cloud metadata service (169.254.169.254,
fd00:ec2::254), the unspecified address or multicast. `check_url` resolves the host name and
checks EVERY address it resolves to; the delivery process checks again right before each POST
and connects to an address it just checked (`pinned_post`), so a DNS answer that changes between
the check and the connection (rebinding) cannot reach an internal address. Redirects are never
followed. The administrator can allow networks (`allowed_subscriber_networks`, CIDRs).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

from reposerver.errors import BadRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))


def refused_reason(address: IPAddress) -> str | None:
    """Why events may not go to `address` by default (None: it is an ordinary address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refused_reason(address.ipv4_mapped)
    if address in METADATA:
        return "a cloud metadata address"
    for test, what in (
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_multicast, "a multicast address"),
    ):
        if test:
            return what
    return None


def _allowed(address: IPAddress, networks: Sequence[str]) -> bool:
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise BadRequest(f"subscriber host {host!r} does not resolve: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def check_url(url: str, allowed_networks: Sequence[str] = ()) -> list[IPAddress]:
    """The checked addresses of subscriber `url`.

    Raises:
        BadRequest: not an http(s) URL, or some address it resolves to is refused.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadRequest(f"subscriber URL {url!r} has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"subscriber URL {url!r} must be http:// or https:// with a host")
    addresses = resolve(parts.hostname, port)
    for address in addresses:
        reason = refused_reason(address)
        if reason and not _allowed(address, allowed_networks):
            raise BadRequest(
                f"subscriber URL {url!r} resolves to {address}, {reason}: refused "
                "(an administrator can allow it with allowed_subscriber_networks)"
            )
    return addresses


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with SNI and certificate checks for the URL's host name."""

    def __init__(self, address: str, hostname: str, port: int, timeout: float) -> None:
        super().__init__(hostname, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def pinned_post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    allowed_networks: Sequence[str] = (),
    timeout: float = 10.0,
) -> int:
    """POST `body` to `url` over a connection to an address checked just now; no redirects.

    Returns the HTTP status. Raises BadRequest (refused address) or OSError (network).
    """
    address = str(check_url(url, allowed_networks)[0])
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    hostname = parts.hostname or ""
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = _PinnedHTTPS(address, hostname, port, timeout)
    else:
        connection = http.client.HTTPConnection(address, port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc.rpartition("@")[2]
    try:
        connection.request("POST", path, body=body, headers={**headers, "Host": host})
        response = connection.getresponse()
        response.read(65536)
        return response.status
    finally:
        connection.close()
