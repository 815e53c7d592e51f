"""The host side of the guest channel: parameters in, readiness out, over serial port 1.

Every appliance VM's second serial port (`/dev/ttyS1` in the guest) is backed by a Unix socket
that qemu listens on (`<serial type='unix'><source mode='bind' path=…/><target port='1'/>`). The
guest agent (examples/appliances/agent, documented in examples/appliances/AGENT.md) speaks the
line protocol of README's "Utility ↔ guest" contract:

    guest → host   COLLECTIVE HELLO <agent version>      repeated every second until answered
    host → guest   COLLECTIVE PARAMS <base64 map string>
    guest → host   COLLECTIVE READY | COLLECTIVE FAILED <reason>

On a remote host (`qemu+ssh://`) that socket would live on the other machine, so there the port
is a pty and the same bytes travel through a libvirt stream (`virDomainOpenConsole` on
`serial1`, `libvirt_host.StreamTransport`); protocol and timeouts are the same either way.

The channel is the only way parameters reach a guest, so sensitive values never touch a file: this
module keeps no copy of what it sent and its transcript records only the size of a PARAMS line.
"""

from __future__ import annotations

import base64
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cvl.maps import decode, encode
from utility.errors import GuestChannelError

PREFIX = "COLLECTIVE "
MAX_LINE = 1 << 20
"""Longest line accepted from a guest; a longer one is a broken guest, not a reason to grow."""

REHELLO_GRACE = 3.0
"""A HELLO this many seconds after PARAMS was sent means the guest restarted: send again."""


def encode_params(params: Mapping[str, Sequence[str]]) -> str:
    """The CVL map string of a parameter set: keys sorted, a list value repeats its key in order.

    A bare string value counts as a one-element list (a str is a Sequence of characters, which
    is never what a caller means).
    """
    pairs: list[tuple[str, str]] = []
    for key in sorted(params):
        if not isinstance(key, str) or not key:
            raise GuestChannelError(f"parameter name {key!r} is not a non-empty string")
        values = params[key]
        if isinstance(values, str):
            values = [values]
        for value in values:
            if not isinstance(value, str):
                raise GuestChannelError(f"parameter {key}: value {value!r} is not a string")
            pairs.append((key, value))
    return encode(pairs)


def decode_params(text: str) -> dict[str, list[str]]:
    """Invert `encode_params`: a map string to {key: [values in order]}."""
    result: dict[str, list[str]] = {}
    for key, value in decode(text):
        result.setdefault(key, []).append(value)
    return result


def params_line(params: Mapping[str, Sequence[str]]) -> bytes:
    """The whole `COLLECTIVE PARAMS …` line, newline included."""
    payload = base64.b64encode(encode_params(params).encode("ascii")).decode("ascii")
    return f"{PREFIX}PARAMS {payload}\n".encode("ascii")


@dataclass(frozen=True)
class Message:
    """One line from the guest. `kind` is HELLO, READY, FAILED, or OTHER for anything else."""

    at: float  # time.monotonic() when it arrived
    kind: str
    arg: str
    line: str


_CLOSED = Message(0.0, "CLOSED", "", "")


def parse_line(raw: bytes, at: float = 0.0) -> Message:
    """Parse one guest line (without its newline); unknown or garbled lines are kind OTHER."""
    line = raw.decode("ascii", "replace").rstrip("\r")
    if line.startswith(PREFIX):
        word, _, arg = line[len(PREFIX) :].partition(" ")
        if word in ("HELLO", "READY", "FAILED"):
            return Message(at, word, arg.strip(), line)
    return Message(at, "OTHER", line, line)


class Transport(Protocol):
    """The bytes of serial port 1: a Unix socket locally, a libvirt stream on a remote host."""

    label: str

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes; b"" at the end; OSError when broken."""
        ...

    def sendall(self, data: bytes) -> None:
        """Send everything; OSError when broken."""
        ...

    def close(self) -> None:
        """End the transport (a blocked `recv` returns or raises)."""
        ...


class SocketTransport:
    """The host-side Unix socket qemu listens on, connected with retries until it accepts."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.label = str(socket_path)
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(socket_path))
                self._sock = sock
                return
            except OSError as exc:
                sock.close()
                last = exc
            if time.monotonic() >= deadline:
                raise GuestChannelError(
                    f"cannot connect to the guest channel {socket_path} within "
                    f"{timeout:.0f} s: {last}"
                )
            time.sleep(0.05)

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class _TimedOut(GuestChannelError):
    """Nothing arrived before the deadline (as opposed to a closed channel)."""


class GuestChannel:
    """One VM's serial-port channel: connect, deliver parameters, wait for readiness.

    Connecting retries until the socket exists and qemu accepts (the VM may still be starting);
    a ready `transport` (a libvirt stream) is used as it is. A reader thread turns incoming
    bytes into `Message`s; `deliver` and `resend` consume them.
    """

    def __init__(
        self,
        socket_path: Path | None = None,
        connect_timeout: float = 30.0,
        transport: Transport | None = None,
    ) -> None:
        if transport is None:
            if socket_path is None:
                raise GuestChannelError("a guest channel needs a socket path or a transport")
            transport = SocketTransport(Path(socket_path), connect_timeout)
        self._sock = transport
        self.socket_path = transport.label
        self.transcript: list[tuple[float, str]] = []
        self.hello_version: str | None = None
        self._messages: queue.Queue[Message] = queue.Queue()
        self._recent: deque[str] = deque(maxlen=5)
        self._send_lock = threading.Lock()
        self.params_sent = 0
        self._closed = threading.Event()
        self._eof = threading.Event()
        self._reader = threading.Thread(
            target=self._read_loop, name=f"guest-channel {self.socket_path}", daemon=True
        )
        self._reader.start()

    # -- connection

    def _read_loop(self) -> None:
        buf = b""
        try:
            while not self._closed.is_set():
                try:
                    chunk = self._sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    self._received(raw)
                if len(buf) > MAX_LINE:
                    self._received(buf[:200] + b"... (line too long, dropped)")
                    buf = b""
        finally:
            self._eof.set()
            self._messages.put(_CLOSED)

    def _received(self, raw: bytes) -> None:
        msg = parse_line(raw, time.monotonic())
        if not msg.line:
            return
        self.transcript.append((msg.at, msg.line))
        self._recent.append(msg.line)
        if msg.kind == "HELLO":
            self.hello_version = msg.arg
        self._messages.put(msg)

    def _send_params(self, params: Mapping[str, Sequence[str]]) -> None:
        line = params_line(params)
        if self._eof.is_set():
            raise GuestChannelError(
                f"guest channel {self.socket_path} is closed (did the VM stop?)"
            )
        with self._send_lock:
            try:
                self._sock.sendall(line)
            except OSError as exc:
                raise GuestChannelError(
                    f"cannot send parameters to {self.socket_path}: {exc}"
                ) from exc
        self.params_sent += 1
        self.transcript.append((time.monotonic(), f"> PARAMS ({len(line)} bytes)"))

    # -- protocol

    def _next(self, deadline: float, waiting_for: str) -> Message:
        remaining = deadline - time.monotonic()
        try:
            msg = (
                self._messages.get(timeout=max(remaining, 0.0))
                if remaining > 0
                else self._messages.get_nowait()
            )
        except queue.Empty:
            seen = "; ".join(self._recent) or "nothing"
            raise _TimedOut(
                f"no {waiting_for} from the guest on {self.socket_path} in time; last seen: {seen}"
            ) from None
        if msg is _CLOSED:
            self._messages.put(_CLOSED)  # later calls see the closure too
            seen = "; ".join(self._recent) or "nothing"
            raise GuestChannelError(
                f"guest channel {self.socket_path} closed while waiting for {waiting_for} "
                f"(did the VM stop?); last seen: {seen}"
            )
        return msg

    def _await_hello(self, timeout: float, pending: Callable[[], bool] | None) -> float:
        """Wait for HELLO; return the deadline it had (the rest of it is READY's)."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if pending is not None and pending():
                deadline = max(deadline, now + timeout)
            try:  # wake at least every second to look at `pending` again
                msg = self._next(min(deadline, now + 1.0) if pending else deadline, "HELLO")
            except _TimedOut:
                if time.monotonic() < deadline or (pending is not None and pending()):
                    continue
                raise
            if msg.kind == "HELLO":
                return deadline

    def _await_ready(
        self, params: Mapping[str, Sequence[str]], sent_at: float, deadline: float
    ) -> None:
        while True:
            try:
                msg = self._next(deadline, "READY")
            except _TimedOut as exc:
                if self.params_sent > 1:  # the guest kept asking: it never read a whole line
                    raise _TimedOut(
                        f"{exc} (PARAMS sent {self.params_sent} times, "
                        f"{len(params_line(params))} bytes each; the guest kept saying HELLO)"
                    ) from None
                raise
            if msg.kind == "READY":
                return
            if msg.kind == "FAILED":
                raise GuestChannelError(f"the guest could not configure itself: {msg.arg}")
            if msg.kind == "HELLO" and msg.at - sent_at > REHELLO_GRACE:
                # The agent started again (guest reboot) and is waiting: it never saw our line.
                self._send_params(params)
                sent_at = time.monotonic()

    def deliver(
        self,
        params: Mapping[str, Sequence[str]],
        timeout: float,
        hold: Callable[[], None] | None = None,
        pending: Callable[[], bool] | None = None,
    ) -> None:
        """Wait for the guest's HELLO, send PARAMS, wait for READY, each within `timeout` seconds.

        `hold`, when given, runs between HELLO and PARAMS (the executor waits there until the
        appliances this VM requires are READY; the agent repeats HELLO meanwhile, and those
        repeats predate PARAMS so they never count as a restart). It may raise to give up.
        `pending`, when given, says whether those appliances are still coming up: while it is
        true the HELLO clock does not run out (a held VM boots at a low CPU weight, on what the
        others leave), so its `timeout` counts from when they are done at the latest.
        Raises GuestChannelError with the guest's reason on FAILED, or on timeout or a closed
        channel with the last lines seen.
        """
        encode_params(params)  # a bad parameter set is an error before any waiting
        deadline = self._await_hello(timeout, pending)
        if hold is not None:
            hold()
            deadline = time.monotonic() + timeout  # the wait was for others, not this guest
        self._send_params(params)
        self._await_ready(params, time.monotonic(), deadline)

    def resend(self, params: Mapping[str, Sequence[str]], timeout: float) -> None:
        """Send a new parameter set to a running guest and wait for READY again."""
        deadline = time.monotonic() + timeout
        encode_params(params)
        while True:  # forget what arrived before: a stale READY must not answer this request
            try:
                msg = self._messages.get_nowait()
            except queue.Empty:
                break
            if msg is _CLOSED:
                self._messages.put(_CLOSED)
                break
        self._send_params(params)
        self._await_ready(params, time.monotonic(), deadline)

    def close(self) -> None:
        """Close the socket and stop the reader thread (idempotent)."""
        self._closed.set()
        self._sock.close()
        self._reader.join(timeout=5)

    def __enter__(self) -> GuestChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def deliver(
    socket_path: str,
    params: Mapping[str, Sequence[str]],
    timeout: float,
    hold: Callable[[], None] | None = None,
    transport: Transport | None = None,
    pending: Callable[[], bool] | None = None,
) -> None:
    """Wait for the guest's HELLO, run `hold`, send PARAMS, wait for READY (GuestChannelError
    otherwise); over `transport` when given, else the Unix socket at `socket_path`."""
    with GuestChannel(Path(socket_path), transport=transport) as channel:
        channel.deliver(params, timeout, hold, pending)


def resend(
    socket_path: str,
    params: Mapping[str, Sequence[str]],
    timeout: float,
    transport: Transport | None = None,
) -> None:
    """Send PARAMS to a running guest and wait for READY again."""
    with GuestChannel(Path(socket_path), transport=transport) as channel:
        channel.resend(params, timeout)
