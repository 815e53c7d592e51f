"""The host side of stretched VAN segments: VXLAN ports and their flood lists.

libvirt makes the bridge of a segment (`<network>`), but it cannot make a VXLAN port or change a
bridge's forwarding database: its interface API (netcf) knows no VXLAN, and network hooks are
host configuration loaded only when libvirtd starts. So the utility sets ports over the same
credentials it reaches libvirt with: for `qemu+ssh://[USER@]HOST[:PORT]/...` it runs one fixed
POSIX shell script through `ssh` (the user's ssh configuration, the URI's `keyfile` and
`no_verify` as libvirt would use them), for a local `qemu:///...` it runs the script here, and
for libvirt's `test:` driver it keeps the ports in memory (a simulated host forwards nothing).
Nothing is installed on a host: it needs only `sh`, `ip` and `bridge` (iproute2) and a kernel
with VXLAN, which `cui host add --underlay` checks (`probe`).

The script reconciles rather than replays: `ensure` makes the port exist with the right VNI,
local address and MTU, enslaved to the bridge and up, and its all-zeros flood entries exactly
the peers given, whatever was there before; `remove` deletes the port (and so all its entries),
and only if it is a VXLAN port; `forget` deletes what the port and its bridge learned about
some MACs (a VM that moved to another host: until it sends again, frames to it flood to every
peer instead of going to its old host). Every value it is given was checked first (names,
numbers, IPv4 and MAC addresses), and over ssh every word is shell-quoted as well.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shlex
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from utility.core.overlay import VXLAN_UDP_PORT
from utility.errors import HostUnreachable, UtilityError

SCRIPT = r"""
set -eu
PATH=/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin
flood() { bridge fdb show dev "$1" | awk '$1 == "00:00:00:00:00:00" && $2 == "dst" {print $3}'; }
is_vxlan() { ip -d -o link show dev "$1" 2>/dev/null | grep -q ' vxlan id '; }
op=$1; shift
case $op in
ensure)
  port=$1 br=$2 vni=$3 local=$4 mtu=$5 dstport=$6; shift 6
  ip link show dev "$br" >/dev/null 2>&1 || { echo "no bridge $br on this host" >&2; exit 3; }
  if ip link show dev "$port" >/dev/null 2>&1; then
    is_vxlan "$port" || { echo "$port exists and is not a VXLAN port" >&2; exit 3; }
    case "$(ip -d -o link show dev "$port") " in
      *" vxlan id $vni local $local "*) ;;
      *) ip link del dev "$port" ;;
    esac
  fi
  ip link show dev "$port" >/dev/null 2>&1 ||
    ip link add "$port" type vxlan id "$vni" dstport "$dstport" local "$local"
  ip link set dev "$port" mtu "$mtu" master "$br" up
  have=" $(flood "$port" | tr '\n' ' ') " dropped=""
  for d in $have; do
    case " $* " in *" $d "*) ;; *)
      bridge fdb del 00:00:00:00:00:00 dev "$port" dst "$d"; dropped=1 ;; esac
  done
  for p in "$@"; do
    case "$have" in *" $p "*) ;; *) bridge fdb append 00:00:00:00:00:00 dev "$port" dst "$p" ;; esac
  done
  if [ -n "$dropped" ]; then
    # MACs learned behind a dropped peer (its VMs moved, or it failed) would swallow unicast
    # until they age out (300 s): forget what the port and the bridge learned on it
    bridge fdb show dev "$port" |
      awk '$1 != "00:00:00:00:00:00" && $2 == "dst" && !/permanent/ {print $1, $3}' |
      while read -r mac d; do bridge fdb del "$mac" dev "$port" dst "$d" 2>/dev/null || :; done
    ip link set dev "$port" type bridge_slave fdb_flush 2>/dev/null || :
  fi
  echo "flood:"
  flood "$port"
  ;;
remove)
  port=$1
  if ! ip link show dev "$port" >/dev/null 2>&1; then echo absent; exit 0; fi
  is_vxlan "$port" || { echo "$port is not a VXLAN port; left alone" >&2; exit 3; }
  ip link del dev "$port"
  echo removed
  ;;
forget)
  port=$1; shift
  if ! is_vxlan "$port"; then echo absent; exit 0; fi
  for m in "$@"; do
    bridge fdb del "$m" dev "$port" self 2>/dev/null || true
    bridge fdb del "$m" dev "$port" master 2>/dev/null || true
  done
  echo forgotten
  ;;
probe)
  local=$1 name=$2 vni=$3 dstport=$4
  command -v bridge >/dev/null || { echo "the bridge command (iproute2) is missing" >&2; exit 3; }
  ip -o -4 addr show | awk '{split($4, a, "/"); print a[1]}' | grep -qxF "$local" ||
    { echo "$local is not an address of this host" >&2; exit 3; }
  ip link add "$name" type vxlan id "$vni" dstport "$dstport" local "$local" ||
    { echo "cannot make a VXLAN port (kernel without vxlan?)" >&2; exit 3; }
  ip link del dev "$name"
  echo ok
  ;;
*) echo "unknown operation $op" >&2; exit 2 ;;
esac
"""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_SSH_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
_SSH_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
TIMEOUT = 60.0


@dataclass(frozen=True)
class PortSpec:
    """What one segment's VXLAN port on one host should be."""

    port: str
    bridge: str
    vni: int
    local: str
    mtu: int
    peers: tuple[str, ...] = ()

    def words(self) -> list[str]:
        """The script's arguments, each checked (hostile values never reach a shell)."""
        _name(self.port, "port")
        _name(self.bridge, "bridge")
        if not 1 <= self.vni <= 0xFFFFFF:
            raise UtilityError(f"VNI {self.vni} is outside 1..16777215")
        if not 576 <= self.mtu <= 9000:
            raise UtilityError(f"MTU {self.mtu} is outside 576..9000")
        addresses = [_ipv4(a) for a in (self.local, *self.peers)]
        return [
            "ensure",
            self.port,
            self.bridge,
            str(self.vni),
            addresses[0],
            str(self.mtu),
            str(VXLAN_UDP_PORT),
            *addresses[1:],
        ]


def _name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise UtilityError(f"{what} name {value!r}: 1-15 letters, digits, '_', '.', '-'")
    return value


_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _mac(value: str) -> str:
    if not _MAC.fullmatch(value.lower()):
        raise UtilityError(f"{value!r} is not a MAC address")
    return value.lower()


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise UtilityError(f"{value!r} is not an IPv4 underlay address") from None


class VxlanPorts:
    """The VXLAN ports of one host (see the module docstring)."""

    def ensure(self, spec: PortSpec) -> tuple[str, ...]:
        """Make the port as `spec` says; return its flood list as the host reports it."""
        raise NotImplementedError

    def remove(self, port: str) -> bool:
        """Delete a VXLAN port and its entries; False if there was none."""
        raise NotImplementedError

    def forget(self, port: str, macs: Sequence[str]) -> bool:
        """Delete the learned entries of `macs` on a VXLAN port and on its bridge's side of
        it; False if there is no such port."""
        raise NotImplementedError

    def probe(self, local: str) -> None:
        """Check this host can carry VXLAN ports from `local` (an address it holds).

        Raises:
            UtilityError: what is missing on the host.
        """
        raise NotImplementedError


class ShellPorts(VxlanPorts):
    """Ports set by the script, run through `prefix` (ssh to the host, or nothing: here).

    Args:
        host: the host's registered name (in every message).
        prefix: the command that runs the script's shell on the host; with `remote` the shell
            command is passed as one quoted string (ssh hands it to the remote login shell).
    """

    def __init__(self, host: str, prefix: Sequence[str], remote: bool) -> None:
        self.host = host
        self.prefix = list(prefix)
        self.remote = remote

    def _run(self, words: list[str], what: str) -> str:
        shell = ["sh", "-s", "--", *words]
        args = [*self.prefix, shlex.join(shell)] if self.remote else [*self.prefix, *shell]
        try:
            proc = subprocess.run(
                args, input=SCRIPT, capture_output=True, text=True, timeout=TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise HostUnreachable(
                f"host {self.host}: {what}: no answer in {TIMEOUT:.0f} s"
            ) from None
        except OSError as exc:
            raise UtilityError(f"host {self.host}: {what}: {exc}") from None
        if proc.returncode == 255 and self.remote:
            raise HostUnreachable(f"host {self.host}: {what}: ssh: {proc.stderr.strip()}")
        if proc.returncode != 0:
            raise UtilityError(f"host {self.host}: {what}: {proc.stderr.strip() or 'failed'}")
        return proc.stdout

    def ensure(self, spec: PortSpec) -> tuple[str, ...]:
        out = self._run(spec.words(), f"set VXLAN port {spec.port}")
        _, _, flood = out.partition("flood:\n")
        return tuple(sorted(flood.split(), key=ipaddress.IPv4Address))

    def remove(self, port: str) -> bool:
        out = self._run(["remove", _name(port, "port")], f"remove VXLAN port {port}")
        return out.strip() == "removed"

    def forget(self, port: str, macs: Sequence[str]) -> bool:
        words = ["forget", _name(port, "port"), *(_mac(m) for m in macs)]
        return self._run(words, f"forget learned MACs on {port}").strip() == "forgotten"

    def probe(self, local: str) -> None:
        name = f"cvxp{secrets.token_hex(4)}"[:15]
        vni = 0xF00000 + secrets.randbelow(0xFFFFF)  # outside the VLAN pool's 1..4094
        words = ["probe", _ipv4(local), name, str(vni), str(VXLAN_UDP_PORT)]
        self._run(words, f"check VXLAN from underlay {local}")


@dataclass
class SimulatedPort:
    """A port of a simulated host, as `ensure` left it."""

    bridge: str
    vni: int
    local: str
    mtu: int
    flood: set[str] = field(default_factory=set)


class SimulatedPorts(VxlanPorts):
    """The ports of a libvirt `test:` host: kept in memory, for as long as its wrapper lives.

    `bridges` says which bridges exist (the host's active networks), so a port on a missing
    bridge fails as it would on a real host.
    """

    def __init__(self, host: str, bridges: Callable[[], list[str]] | None = None) -> None:
        self.host = host
        self.ports: dict[str, SimulatedPort] = {}
        self._bridges = bridges
        self._lock = threading.Lock()

    def ensure(self, spec: PortSpec) -> tuple[str, ...]:
        words = spec.words()
        if self._bridges is not None and spec.bridge not in self._bridges():
            raise UtilityError(f"host {self.host}: set VXLAN port {spec.port}: no bridge")
        with self._lock:
            port = self.ports.get(spec.port)
            if port is None or (port.vni, port.local) != (spec.vni, words[4]):
                port = SimulatedPort(spec.bridge, spec.vni, words[4], spec.mtu)
                self.ports[spec.port] = port
            port.bridge, port.mtu, port.flood = spec.bridge, spec.mtu, set(words[7:])
            return tuple(sorted(port.flood, key=ipaddress.IPv4Address))

    def remove(self, port: str) -> bool:
        with self._lock:
            return self.ports.pop(_name(port, "port"), None) is not None

    def forget(self, port: str, macs: Sequence[str]) -> bool:
        for mac in macs:
            _mac(mac)
        with self._lock:
            return _name(port, "port") in self.ports  # a simulated host learns nothing

    def probe(self, local: str) -> None:
        _ipv4(local)


def for_uri(host: str, uri: str, bridges: Callable[[], list[str]] | None = None) -> VxlanPorts:
    """The port channel of a host reached at libvirt `uri` (`bridges`: a simulated host's
    bridges, for its checks).

    Raises:
        UtilityError: the URI's transport gives the utility no way to run commands there.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme
    if scheme == "test":
        return SimulatedPorts(host, bridges)
    if scheme in ("qemu", "qemu+unix") and not parts.hostname:
        return ShellPorts(host, [], remote=False)
    if scheme == "qemu+ssh" and parts.hostname:
        return ShellPorts(host, ssh_prefix(uri), remote=True)
    raise UtilityError(
        f"host {host}: VXLAN ports need a local qemu:/// or a qemu+ssh:// host, not {uri!r}"
    )


def control_dir() -> Path | None:
    """A directory for ssh control sockets that only this user can reach, or None (then every
    call opens its own connection): a socket there runs commands as us on the host."""
    path = Path(tempfile.gettempdir()) / f"collective-ssh-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    private = stat.S_ISDIR(info.st_mode) and info.st_mode & 0o077 == 0
    return path if private and info.st_uid == os.getuid() else None


def ssh_prefix(uri: str) -> list[str]:
    """The ssh command that reaches the host of a `qemu+ssh://` URI as libvirt does.

    Raises:
        UtilityError: a user or host name that could be read as an ssh option, or a bad port.
    """
    parts = urlsplit(uri)
    hostname = parts.hostname or ""
    if parts.username is not None and not _SSH_USER.fullmatch(parts.username):
        raise UtilityError(f"host URI {uri!r}: user name {parts.username!r} is not allowed")
    if not _SSH_HOST.fullmatch(hostname):
        raise UtilityError(f"host URI {uri!r}: host name {hostname!r} is not allowed")
    try:
        port = parts.port
    except ValueError:
        raise UtilityError(f"host URI {uri!r}: the port is not a number") from None
    query = parse_qs(parts.query)
    args = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    mux = control_dir()
    if mux is not None:  # one ssh connection per host, kept 60 s: later calls skip the handshake
        args += ["-o", "ControlMaster=auto", "-o", f"ControlPath={mux}/%C"]
        args += ["-o", "ControlPersist=60", "-o", "ServerAliveInterval=5"]
    if port is not None:
        args += ["-p", str(port)]
    if parts.username:
        args += ["-l", parts.username]
    if "keyfile" in query:
        args += ["-i", query["keyfile"][-1]]
    if query.get("no_verify", ["0"])[-1] == "1":
        args += ["-o", "StrictHostKeyChecking=no"]
    return [*args, "--", hostname]
