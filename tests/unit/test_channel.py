"""The host side of the guest channel against a scripted guest on a real Unix socket.

The fake guest is the protocol peer (what qemu's serial socket carries), run in a thread; it is
not a mock of anything that could run here instead. The parameter encoding is also checked
against the guest agent's own decoder (examples/appliances/agent/mapdecode.awk, run by busybox
awk), so host and guest agree on every parameter set hypothesis can think of.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import utility.adapters.guest_channel as channel_mod
from utility.adapters.guest_channel import (
    GuestChannel,
    decode_params,
    encode_params,
    params_line,
    parse_line,
)
from utility.errors import GuestChannelError

AGENT = Path(__file__).resolve().parents[2] / "examples" / "appliances" / "agent"


# ------------------------------------------------------------------ encoding


def test_encode_params_sorts_keys_and_repeats_list_values_in_order() -> None:
    text = encode_params({"forwarders": ["10.0.0.1", "10.0.0.2"], "domain": ["acme.org"]})
    assert text == "domain=acme%2Eorg&forwarders=10%2E0%2E0%2E1&forwarders=10%2E0%2E0%2E2"


def test_a_bare_string_value_is_one_value_not_characters() -> None:
    assert decode_params(encode_params({"domain": "acme.org"})) == {"domain": ["acme.org"]}


def test_nested_map_values_are_escaped_once_more() -> None:
    inner = "name=l&ip=10%2E0%2E1%2E3"  # a map value as CVL evaluates it
    text = encode_params({"dnshosts": [inner]})
    assert text == "dnshosts=name%3Dl%26ip%3D10%252E0%252E1%252E3"
    assert decode_params(text) == {"dnshosts": [inner]}


@pytest.mark.parametrize(
    "params, what",
    [
        ({"": ["x"]}, "parameter name ''"),
        ({"a": [1]}, "parameter a: value 1 is not a string"),
    ],
)
def test_bad_parameter_sets_are_refused_with_what_is_wrong(params: dict, what: str) -> None:
    with pytest.raises(GuestChannelError, match=what):
        encode_params(params)


def test_params_line_is_one_ascii_line_of_base64() -> None:
    line = params_line({"rootdnpass": ["s3cret!"]})
    assert line.startswith(b"COLLECTIVE PARAMS ") and line.endswith(b"\n")
    assert line.count(b"\n") == 1
    payload = line[len(b"COLLECTIVE PARAMS ") : -1]
    assert base64.b64decode(payload, validate=True) == b"rootdnpass=s3cret%21"


keys = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
values = st.text(
    st.characters(blacklist_characters="\n\x00", blacklist_categories=("Cs",)), max_size=30
)
param_sets = st.dictionaries(keys, st.lists(values, min_size=1, max_size=4), max_size=8)


@given(param_sets)
def test_encode_then_decode_is_identity(params: dict[str, list[str]]) -> None:
    assert decode_params(encode_params(params)) == params


def _agent_decode(text: str, workdir: Path) -> dict[str, list[str]]:
    """What the guest agent makes of a map string: one file per key, one value per line."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    subprocess.run(
        ["busybox", "awk", "-v", f"dir={out}", "-f", str(AGENT / "mapdecode.awk")],
        input=text.encode(),
        check=True,
        capture_output=True,
    )
    result = {}
    for path in out.iterdir():
        result[path.name] = path.read_bytes().decode("utf-8").split("\n")[:-1]
    return result


NO_BUSYBOX = pytest.mark.skipif(
    shutil.which("busybox") is None, reason="busybox (the guest's awk) is not installed"
)


@NO_BUSYBOX
@settings(max_examples=60, deadline=None)
@given(param_sets)
def test_the_guest_agent_decodes_exactly_what_the_host_encodes(
    params: dict[str, list[str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        assert _agent_decode(encode_params(params), Path(tmp)) == params


@NO_BUSYBOX
@pytest.mark.parametrize(
    "text, message",
    [
        ("a=%zz", "bad escape at byte 1"),
        ("a=b&c", "pair 2 has no '='"),
        ("a=b.c", "unescaped byte '.'"),
        ("a%2Fb=c", "key 'a/b' is not a parameter name"),
        ("a=x%0Ay", "value of a contains a newline"),
    ],
)
def test_the_guest_agent_rejects_malformed_maps_saying_why(
    text: str, message: str, tmp_path: Path
) -> None:
    decoder = str(AGENT / "mapdecode.awk")
    proc = subprocess.run(
        ["busybox", "awk", "-v", f"dir={tmp_path}", "-f", decoder],
        input=text.encode(),
        capture_output=True,
    )
    assert proc.returncode == 2
    assert message in proc.stderr.decode()


@pytest.mark.parametrize(
    "raw, kind, arg",
    [
        (b"COLLECTIVE HELLO 1", "HELLO", "1"),
        (b"COLLECTIVE HELLO 1\r", "HELLO", "1"),
        (b"COLLECTIVE READY", "READY", ""),
        (b"COLLECTIVE FAILED data disk vdb is missing", "FAILED", "data disk vdb is missing"),
        (b"COLLECTIVE WHATEVER x", "OTHER", "COLLECTIVE WHATEVER x"),
        (b"\xff\xfe garbage", "OTHER", "\ufffd\ufffd garbage"),
    ],
)
def test_parse_line(raw: bytes, kind: str, arg: str) -> None:
    msg = parse_line(raw)
    assert (msg.kind, msg.arg) == (kind, arg)


# ------------------------------------------------------------------ a scripted guest


class FakeGuest:
    """Listens where qemu would; `script(conn, guest)` plays the guest's side of one connection."""

    def __init__(
        self, path: Path, script: Callable[[socket.socket, FakeGuest], None], delay: float = 0.0
    ) -> None:
        self.path = path
        self.script = script
        self.received: list[bytes] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()
        self._delay = delay
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            time.sleep(self._delay)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(self.path))
            server.listen(1)
            conn, _ = server.accept()
            with conn, server:
                self.script(conn, self)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test through .errors
            self.errors.append(exc)
        finally:
            self.done.set()

    def read_line(self, conn: socket.socket, timeout: float = 5.0) -> bytes:
        conn.settimeout(timeout)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                raise EOFError("host closed the channel")
            buf += chunk
        self.received.append(buf)
        return buf

    def hello_until_params(self, conn: socket.socket, period: float = 0.05) -> dict[str, list[str]]:
        """Say HELLO every `period` seconds until a PARAMS line arrives; return its parameters."""
        conn.settimeout(period)
        buf = b""
        while True:
            conn.sendall(b"COLLECTIVE HELLO 1\n")
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise EOFError("host closed the channel")
            buf += chunk
            if buf.endswith(b"\n"):
                self.received.append(buf)
                return decode_line(buf)


def decode_line(line: bytes) -> dict[str, list[str]]:
    assert line.startswith(b"COLLECTIVE PARAMS ") and line.endswith(b"\n")
    return decode_params(base64.b64decode(line[len(b"COLLECTIVE PARAMS ") : -1]).decode())


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ch") as tmp:  # short: AF_UNIX paths max 108 bytes
        yield Path(tmp) / "guest.sock"


PARAMS = {"domain": ["acme.org"], "ethernet0.ip": ["10.0.1.2"], "forwarders": ["a", "b"]}


def test_deliver_waits_for_hello_sends_params_and_returns_on_ready(sock_path: Path) -> None:
    seen: dict = {}

    def guest(conn: socket.socket, g: FakeGuest) -> None:
        seen.update(g.hello_until_params(conn))
        conn.sendall(b"some console noise\nCOLLECTIVE READY\n")

    fake = FakeGuest(sock_path, guest, delay=0.3)  # the socket appears late: connect retries
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        ch.deliver(PARAMS, timeout=5)
        assert ch.hello_version == "1"
    fake.done.wait(5)
    assert not fake.errors
    assert seen == PARAMS


def test_failed_raises_with_the_guests_reason(sock_path: Path) -> None:
    def guest(conn: socket.socket, g: FakeGuest) -> None:
        g.hello_until_params(conn)
        conn.sendall(b"COLLECTIVE FAILED data disk vdb is neither all-zero nor a filesystem\n")
        time.sleep(0.5)

    FakeGuest(sock_path, guest)
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        with pytest.raises(GuestChannelError, match="vdb is neither all-zero nor a filesystem"):
            ch.deliver(PARAMS, timeout=5)


def test_no_hello_times_out_saying_what_it_waited_for(sock_path: Path) -> None:
    def guest(conn: socket.socket, g: FakeGuest) -> None:
        conn.sendall(b"booting...\n")
        time.sleep(1.5)

    FakeGuest(sock_path, guest)
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        start = time.monotonic()
        with pytest.raises(GuestChannelError, match=r"no HELLO .* last seen: booting\.\.\."):
            ch.deliver(PARAMS, timeout=0.5)
        assert time.monotonic() - start < 1.4


def test_no_ready_times_out_with_the_last_lines_seen(sock_path: Path) -> None:
    def guest(conn: socket.socket, g: FakeGuest) -> None:
        g.hello_until_params(conn)
        conn.sendall(b"still starting\n")
        time.sleep(1.5)

    FakeGuest(sock_path, guest)
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        with pytest.raises(GuestChannelError, match="no READY .*still starting"):
            ch.deliver(PARAMS, timeout=0.7)


def test_a_guest_that_goes_away_is_an_error_not_a_hang(sock_path: Path) -> None:
    def guest(conn: socket.socket, g: FakeGuest) -> None:
        g.hello_until_params(conn)  # then the VM dies: the socket closes

    FakeGuest(sock_path, guest)
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        with pytest.raises(GuestChannelError, match="closed while waiting for READY"):
            ch.deliver(PARAMS, timeout=5)
        with pytest.raises(GuestChannelError, match="closed"):
            ch.resend(PARAMS, timeout=5)


def test_connecting_to_a_socket_that_never_appears_fails_in_time(sock_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(GuestChannelError, match="cannot connect to the guest channel"):
        GuestChannel(sock_path, connect_timeout=0.3)
    assert time.monotonic() - start < 2


def test_resend_reconfigures_and_a_stale_ready_does_not_answer_it(sock_path: Path) -> None:
    got: list[dict] = []

    def guest(conn: socket.socket, g: FakeGuest) -> None:
        got.append(g.hello_until_params(conn))
        conn.sendall(b"COLLECTIVE READY\nCOLLECTIVE READY\n")  # a duplicate READY lingers
        got.append(decode_line(g.read_line(conn)))
        conn.sendall(b"COLLECTIVE FAILED forwarders: bad address\n")
        got.append(decode_line(g.read_line(conn)))
        conn.sendall(b"COLLECTIVE READY\n")
        time.sleep(0.5)

    fake = FakeGuest(sock_path, guest)
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        ch.deliver(PARAMS, timeout=5)
        deadline = time.monotonic() + 5  # the duplicate READY has arrived before the resend
        while [line for _, line in ch.transcript].count("COLLECTIVE READY") < 2:
            assert time.monotonic() < deadline, ch.transcript
            time.sleep(0.01)
        with pytest.raises(GuestChannelError, match="forwarders: bad address"):
            ch.resend({**PARAMS, "forwarders": ["bad"]}, timeout=5)
        ch.resend({**PARAMS, "forwarders": ["c"]}, timeout=5)
    fake.done.wait(5)
    assert not fake.errors
    assert [p["forwarders"] for p in got] == [["a", "b"], ["bad"], ["c"]]


def test_a_guest_that_restarts_gets_the_parameters_again(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channel_mod, "REHELLO_GRACE", 0.2)
    got: list[dict] = []

    def guest(conn: socket.socket, g: FakeGuest) -> None:
        got.append(g.hello_until_params(conn))
        time.sleep(0.4)  # rebooted: the first PARAMS line is lost, the new agent says HELLO
        got.append(g.hello_until_params(conn))
        conn.sendall(b"COLLECTIVE READY\n")
        time.sleep(0.3)

    FakeGuest(sock_path, guest)
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        ch.deliver(PARAMS, timeout=5)
    assert got == [PARAMS, PARAMS]


def test_a_guest_that_never_reads_params_times_out_saying_how_often_they_were_sent(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure seen once on a lab host: the guest says HELLO on and on, never READY, though
    PARAMS went out again after every grace period: the error says so, with the line's size."""
    monkeypatch.setattr(channel_mod, "REHELLO_GRACE", 0.1)

    def guest(conn: socket.socket, g: FakeGuest) -> None:
        conn.settimeout(0.05)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:  # deaf: HELLO forever, whatever arrives is dropped
            conn.sendall(b"COLLECTIVE HELLO 1\n")
            try:
                conn.recv(65536)
            except TimeoutError:
                pass

    FakeGuest(sock_path, guest)
    size = len(channel_mod.params_line(PARAMS))
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        with pytest.raises(
            GuestChannelError,
            match=rf"no READY .*HELLO 1.*PARAMS sent \d+ times, {size} bytes each; the guest kept",
        ):
            ch.deliver(PARAMS, timeout=0.8)
        assert ch.params_sent > 1


def test_the_transcript_never_holds_parameter_values(sock_path: Path) -> None:
    def guest(conn: socket.socket, g: FakeGuest) -> None:
        g.hello_until_params(conn)
        conn.sendall(b"COLLECTIVE READY\n")
        time.sleep(0.3)

    FakeGuest(sock_path, guest)
    secret = "correct horse battery staple"
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        ch.deliver({"rootdnpass": [secret]}, timeout=5)
        text = "\n".join(line for _, line in ch.transcript)
    assert "> PARAMS (" in text and "COLLECTIVE READY" in text
    encoded = params_line({"rootdnpass": [secret]}).decode()
    assert secret not in text and encoded.split()[-1] not in text


def test_bad_parameters_fail_before_any_waiting(sock_path: Path) -> None:
    def guest(conn: socket.socket, g: FakeGuest) -> None:
        time.sleep(1)

    FakeGuest(sock_path, guest)
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        start = time.monotonic()
        with pytest.raises(GuestChannelError, match="is not a string"):
            ch.deliver({"a": [None]}, timeout=30)  # type: ignore[list-item]
        assert time.monotonic() - start < 0.5


@pytest.mark.parametrize("pending_for", [0.0, 2.0])
def test_a_held_vm_gets_its_whole_timeout_after_its_requirements_are_up(
    sock_path: Path, pending_for: float
) -> None:
    """The HELLO clock of a held VM (booting at a low CPU weight) does not run out while its
    requirements are still coming up; once they are, it gets its whole timeout again."""

    def guest(conn: socket.socket, g: FakeGuest) -> None:
        time.sleep(1.5)  # a slow boot: longer than the timeout below
        g.hello_until_params(conn)
        conn.sendall(b"COLLECTIVE READY\n")
        time.sleep(0.3)

    FakeGuest(sock_path, guest)
    until = time.monotonic() + pending_for
    with GuestChannel(sock_path, connect_timeout=5) as ch:
        if pending_for:
            ch.deliver({"a": ["1"]}, timeout=0.8, pending=lambda: time.monotonic() < until)
        else:
            with pytest.raises(GuestChannelError, match="no HELLO"):
                ch.deliver({"a": ["1"]}, timeout=0.8)
