"""The one libvirt wrapper: a connection per host URI, reconnects, feature probes, operations.

libvirtd is the host manager (paper: one host manager per computer): `qemu:///system` locally,
`qemu+ssh://HOST/system` for a cluster, `test:` URIs for simulated hosts. Domains and networks
the utility creates are transient, so a host reboot leaves nothing behind; the cluster manager's
SQLite state is the record of what should run.

Test driver note: `test:///default` is one shared instance per process; `test:///PATH.xml` gives
each connection a private instance. Connections stay open for the daemon's lifetime, so a
test host's domains live exactly as long as the daemon (a SIGKILL takes them along). Test
domains have no guest: readiness is immediate there (see `executor`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

import libvirt

from utility.adapters import vxlan_ports
from utility.adapters.simulation import persisted_node, save_simulated_host
from utility.errors import GuestChannelError, HostUnreachable, UtilityError

if TYPE_CHECKING:
    from utility.adapters.host_storage import HostStorage

T = TypeVar("T")

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions

_GONE = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_NETWORK}


def _unless_gone(lookup: Callable[[], T]) -> T | None:
    """`lookup()`, or None when the domain or network does not exist; other errors are raised."""
    try:
        return lookup()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in _GONE:
            return None
        raise


@contextmanager
def _ignoring_gone() -> Iterator[None]:
    """Run a block whose object may vanish meanwhile (a guest powering off, a racing stop)."""
    try:
        yield
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in _GONE:
            raise


_CONNECTION = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_INTERNAL_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
}


@dataclass(frozen=True)
class DomainInfo:
    """A domain as a host reports it."""

    name: str
    running: bool
    xml: str


# Called with (host name, domain name) when a domain stops or crashes on its own or is destroyed.
DomainStopped = Callable[[str, str], None]
# Says whether a host name is cut off (tests inject one; a real host is never cut off).
Fault = Callable[[str], bool]

_STOPPED_EVENTS = {libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_CRASHED}
_event_loop: list[threading.Thread] = []
_event_guard = threading.Lock()


def start_event_loop() -> bool:
    """Run libvirt's default event loop in a daemon thread (once per process).

    Must run before the connections that register for events are opened. Returns True when the
    loop runs (False if libvirt refused to register it).
    """
    with _event_guard:
        if _event_loop:
            return True
        if libvirt.virEventRegisterDefaultImpl() != 0:
            return False

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        thread = threading.Thread(target=run, daemon=True, name="libvirt-events")
        thread.start()
        _event_loop.append(thread)
        return True


def never_cut_off(_name: str) -> bool:
    """The fault of a real host pool: none."""
    return False


KEEPALIVE = (5, 3)
"""libvirt keepalive (interval seconds, missed probes) on remote connections: a host silent for
about 20 s has its connection closed, so calls fail instead of hanging."""


class LibvirtHost:
    """One host manager: a libvirt URI with a lazily opened, re-opened connection.

    Args:
        name: the host's registered name (used in every error message).
        uri: the libvirt connection URI.
        on_stopped: told about each domain that stops (registered when a connection opens and
            the libvirt event loop runs).
        fault: says whether this host is cut off (then every call is `HostUnreachable`).
    """

    def __init__(
        self,
        name: str,
        uri: str,
        on_stopped: DomainStopped | None = None,
        fault: Fault = never_cut_off,
    ) -> None:
        self.name = name
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._on_stopped = on_stopped
        self._fault = fault
        self.keepalive: tuple[int, int] | None = KEEPALIVE
        self._ports: vxlan_ports.VxlanPorts | None = None
        self._storage: HostStorage | None = None

    @property
    def storage(self) -> HostStorage:
        """The utility's storage pools on this host (`utility.adapters.host_storage`)."""
        with self._lock:
            if self._storage is None:
                from utility.adapters.host_storage import HostStorage

                self._storage = HostStorage(self)
            return self._storage

    # -- connection -----------------------------------------------------------------------------

    def connection(self) -> libvirt.virConnect:
        """The open connection, opening or re-opening it as needed.

        Raises:
            HostUnreachable: libvirt cannot connect; names the host and URI.
        """
        if self._fault(self.name):
            raise HostUnreachable(f"host {self.name}: cannot connect to {self.uri}: cut off")
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._conn = None
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise HostUnreachable(
                    f"host {self.name}: cannot connect to {self.uri}: {exc.get_error_message()}"
                ) from None
            self._watch(self._conn)
            self._keep_alive(self._conn)
            return self._conn

    def _keep_alive(self, conn: libvirt.virConnect) -> None:
        """Ask libvirt to close the connection when the host stops answering keepalive probes
        (needs the event loop; remote URIs only: local and test connections have none)."""
        if not _event_loop or self.keepalive is None or "+" not in self.uri.split(":", 1)[0]:
            return
        try:
            conn.setKeepAlive(*self.keepalive)
        except libvirt.libvirtError:
            pass  # the periodic probe still notices a silent host

    def probe(self) -> bool:
        """Whether the host answers now: a connection and one round trip to its libvirtd."""
        try:
            self._call("probe", lambda c: c.getLibVersion())
        except UtilityError:
            return False
        return True

    def _watch(self, conn: libvirt.virConnect) -> None:
        """Register for domain lifecycle events when someone listens and the event loop runs."""
        if self._on_stopped is None or not _event_loop:
            return
        listener = self._on_stopped

        def lifecycle(_c: object, dom: libvirt.virDomain, event: int, _d: int, _o: object) -> None:
            if event in _STOPPED_EVENTS:
                listener(self.name, dom.name())

        try:
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None
            )
        except libvirt.libvirtError:
            pass  # no events from this driver: the periodic check still sees the domain stop

    def close(self) -> None:
        """Close the connection (a test: host's private instance ends with it)."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None

    def _call(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run `fn` on the connection, reconnecting once if the connection broke."""
        for attempt in (1, 2):
            conn = self.connection()
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                code = exc.get_error_code()
                alive = False
                try:
                    alive = bool(conn.isAlive())
                except libvirt.libvirtError:
                    alive = False
                if attempt == 1 and code in _CONNECTION and not alive:
                    with self._lock:
                        self._conn = None
                    continue
                raise UtilityError(f"host {self.name}: {what}: {exc.get_error_message()}") from None
        raise HostUnreachable(f"host {self.name}: {what}: connection lost")  # pragma: no cover

    # -- probes ---------------------------------------------------------------------------------

    @property
    def is_test(self) -> bool:
        """True for libvirt's test driver: no real guest runs, readiness is immediate."""
        return self.uri.startswith("test:")

    @property
    def is_local(self) -> bool:
        """True when libvirtd runs on this machine (no host in the URI, no remote transport):
        the guest channel and the console log may then be files the utility reads directly."""
        parsed = urlparse(self.uri)
        return not parsed.netloc and parsed.scheme in ("qemu", "qemu+unix")

    @property
    def channel_over_stream(self) -> bool:
        """Whether the guest channel is a pty reached through a libvirt stream: always on a
        remote host; locally only with $COLLECTIVE_GUEST_CHANNEL=stream (measured as fast as
        the Unix socket, `scripts/bench "guest channel"`; the socket stays the local default)."""
        return not self.is_local or os.environ.get("COLLECTIVE_GUEST_CHANNEL") == "stream"

    def domain_type(self) -> str:
        """`kvm` only when the capabilities offer it and $COLLECTIVE_KVM=1, else `qemu` (TCG).

        KVM guests hung at boot on this project's reference machine, so TCG is the default.
        """
        if self.is_test:
            return "qemu"
        caps = self._call("read capabilities", lambda c: c.getCapabilities())
        if "type='kvm'" in caps and os.environ.get("COLLECTIVE_KVM") == "1":
            return "kvm"
        return "qemu"

    def supports_vlan(self) -> bool:
        """Whether networks on this host may carry a VLAN tag.

        libvirt tags only Open vSwitch (and hostdev) networks; plain Linux bridges cannot, and the
        reference hosts have no 8021q either, so the VLAN only drives addressing and naming.
        """
        return False

    def memory(self) -> int:
        """The host's physical memory in bytes."""
        info = self._call("read node info", lambda c: c.getInfo())
        return int(info[1]) * (1 << 20)

    def usable_for_qemu(self) -> bool:
        """Whether this URI connects and can run qemu (TCG at least) domains."""
        try:
            caps = self._call("read capabilities", lambda c: c.getCapabilities())
        except UtilityError:
            return False
        return "type='qemu'" in caps

    # -- domains --------------------------------------------------------------------------------

    def create_domain(self, xml: str) -> None:
        """Start a transient domain from XML."""
        self._call("start domain", lambda c: c.createXML(xml, 0))
        self._save_simulated()

    def _save_simulated(self) -> None:
        """A persistent simulated host writes its domains and networks down after each change
        (see `simulation`); every other host does nothing."""
        if not self.is_test:
            return
        path = persisted_node(self.uri)
        if path is not None:
            self._call("save simulated host", lambda c: save_simulated_host(c, path))

    def domain(self, name: str) -> DomainInfo | None:
        """The domain called `name`, or None."""

        def look(c: libvirt.virConnect) -> DomainInfo | None:
            try:
                dom = c.lookupByName(name)
                state = dom.state()[0]
                return DomainInfo(name, state == libvirt.VIR_DOMAIN_RUNNING, dom.XMLDesc(0))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _GONE:
                    return None
                raise

        return self._call(f"look up domain {name}", look)

    def domains(self) -> list[DomainInfo]:
        """Every domain the host knows, running or defined."""

        def listing(c: libvirt.virConnect) -> list[DomainInfo]:
            out = []
            for dom in c.listAllDomains(0):
                try:
                    state = dom.state()[0]
                    out.append(
                        DomainInfo(dom.name(), state == libvirt.VIR_DOMAIN_RUNNING, dom.XMLDesc(0))
                    )
                except libvirt.libvirtError:
                    continue  # vanished while listing
            return out

        return self._call("list domains", listing)

    def destroy_domain(self, name: str) -> bool:
        """Force a domain off and forget it; False if it did not exist."""

        def kill(c: libvirt.virConnect) -> bool:
            dom = _unless_gone(lambda: c.lookupByName(name))
            if dom is None:
                return False
            with _ignoring_gone():
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
            return True

        gone = self._call(f"destroy domain {name}", kill)
        if gone:
            self._save_simulated()
        return gone

    def set_cpu_weight(self, name: str, shares: int) -> bool:
        """Give running domain `name` this relative CPU weight (cgroup `cpu.shares`, live only;
        1024 is every domain's default). A hint: False where the host cannot (no cgroup CPU
        controller, a domain already gone), never an error."""

        def weigh(c: libvirt.virConnect) -> bool:
            try:
                dom = c.lookupByName(name)
                dom.setSchedulerParametersFlags(
                    {"cpu_shares": shares}, libvirt.VIR_DOMAIN_AFFECT_LIVE
                )
            except libvirt.libvirtError:
                return False
            return True

        try:
            return self._call(f"weigh domain {name}", weigh)
        except UtilityError:
            return False

    def shutdown_domain(self, name: str, timeout: float, poll: float = 0.2) -> str:
        """Ask the guest to shut down; force it off after `timeout` seconds.

        Returns:
            "absent", "clean" (it went down in time) or "forced".
        """

        def request(c: libvirt.virConnect) -> bool:
            dom = _unless_gone(lambda: c.lookupByName(name))
            if dom is None:
                return False
            with _ignoring_gone():
                dom.shutdown()
            return True

        if not self._call(f"shut down domain {name}", request):
            return "absent"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.domain(name)
            if info is None or not info.running:
                if info is not None:
                    self.destroy_domain(name)
                return "clean"
            time.sleep(poll)
        self.destroy_domain(name)
        return "forced"

    def open_serial(self, name: str, device: str) -> StreamTransport:
        """A byte stream to serial `device` (e.g. "serial1", a pty on the host) of domain `name`
        through `virDomainOpenConsole` over this host's connection (qemu+ssh included)."""

        def open_console(c: libvirt.virConnect) -> StreamTransport:
            dom = c.lookupByName(name)
            stream = c.newStream(0)
            dom.openConsole(device, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            return StreamTransport(stream, f"{device} of {name} on host {self.name}")

        return self._call(f"open {device} of domain {name}", open_console)

    # -- networks -------------------------------------------------------------------------------

    def ensure_network(self, name: str, xml: str) -> bool:
        """Start a transient network unless one of that name is active; True if created."""

        def up(c: libvirt.virConnect) -> bool:
            try:
                net = c.networkLookupByName(name)
                if net.isActive():
                    return False
                net.create()
                return True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _GONE:
                    raise
            c.networkCreateXML(xml)
            return True

        created = self._call(f"start network {name}", up)
        if created:
            self._save_simulated()
        return created

    def remove_network(self, name: str) -> bool:
        """Stop (and forget) a network; False if it did not exist."""

        def down(c: libvirt.virConnect) -> bool:
            net = _unless_gone(lambda: c.networkLookupByName(name))
            if net is None:
                return False
            if net.isActive():
                net.destroy()
            with _ignoring_gone():
                if net.isPersistent():
                    net.undefine()
            return True

        removed = self._call(f"stop network {name}", down)
        if removed:
            self._save_simulated()
        return removed

    def networks(self) -> list[str]:
        """Names of the host's active networks."""
        return self._call(
            "list networks", lambda c: [n.name() for n in c.listAllNetworks(0) if n.isActive()]
        )

    def bridges(self) -> list[str]:
        """Bridge names of the host's active networks."""

        def listing(c: libvirt.virConnect) -> list[str]:
            return [n.bridgeName() for n in c.listAllNetworks(0) if n.isActive()]

        return self._call("list bridges", listing)

    @property
    def ports(self) -> vxlan_ports.VxlanPorts:
        """The host's VXLAN ports, set over the same credentials as its libvirt URI.

        Raises:
            HostUnreachable: the host is cut off.
            UtilityError: the URI gives no way to run commands on the host.
        """
        if self._fault(self.name):
            raise HostUnreachable(f"host {self.name}: cannot reach {self.uri}: cut off")
        if self._ports is None:
            self._ports = vxlan_ports.for_uri(self.name, self.uri, self.bridges)
        return self._ports


class StreamTransport:
    """A libvirt stream as the guest channel's byte transport (`guest_channel.Transport`).

    The reads block in the channel's reader thread; sends come from the caller's thread (the
    stream moves data while either call is in progress, event loop or not).
    """

    def __init__(self, stream: libvirt.virStream, label: str) -> None:
        self._stream = stream
        self.label = label

    def recv(self, size: int) -> bytes:
        try:
            chunk = self._stream.recv(size)
        except libvirt.libvirtError as exc:
            raise OSError(exc.get_error_message()) from None
        if isinstance(chunk, int):  # -2: would block; a blocking stream never says so
            return b"" if chunk == -1 else self.recv(size)
        return bytes(chunk)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                sent = self._stream.send(bytes(view))
                if sent < 0:
                    raise GuestChannelError(f"{self.label}: the stream refused data")
                view = view[sent:]
        except libvirt.libvirtError as exc:
            raise OSError(exc.get_error_message()) from None

    def close(self) -> None:
        try:
            self._stream.abort()
        except libvirt.libvirtError:
            pass


class HostPool:
    """The open `LibvirtHost` of every registered host, keyed by name; one per daemon.

    Args:
        fault: says whether a host is cut off (tests inject one to make a host unreachable).
    """

    def __init__(self, fault: Fault = never_cut_off) -> None:
        self._hosts: dict[str, LibvirtHost] = {}
        self._lock = threading.Lock()
        self.fault = fault
        self.on_stopped: DomainStopped | None = None

    def get(self, name: str, uri: str) -> LibvirtHost:
        """The wrapper for host `name`, replaced if its URI changed."""
        with self._lock:
            host = self._hosts.get(name)
            if host is None or host.uri != uri:
                if host is not None:
                    host.close()
                host = LibvirtHost(name, uri, self._stopped, self.fault)
                self._hosts[name] = host
            return host

    def _stopped(self, host: str, domain: str) -> None:
        if self.on_stopped is not None:
            self.on_stopped(host, domain)

    def drop(self, name: str) -> None:
        """Close and forget host `name`."""
        with self._lock:
            host = self._hosts.pop(name, None)
        if host is not None:
            host.close()

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            hosts, self._hosts = list(self._hosts.values()), {}
        for host in hosts:
            host.close()


def probe_default_uri() -> tuple[str, str]:
    """The embedded default host's URI and a one-line reason.

    `qemu:///system` when libvirtd answers and offers qemu domains, else `test:///default`.
    """
    probe = LibvirtHost("local", "qemu:///system")
    try:
        if probe.usable_for_qemu():
            kind = probe.domain_type()
            return "qemu:///system", f"local libvirtd (qemu:///system, domain type {kind})"
    finally:
        probe.close()
    return "test:///default", "libvirtd/qemu not usable here: simulated host test:///default"
