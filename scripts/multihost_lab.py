"""A multi-host lab on one machine: N "hosts", each reached only as `qemu+ssh://root@IP/system`.

Each host is a network namespace (`clabN`) plus a persistent mount and UTS namespace in which
its own virtlogd, libvirtd and sshd run. The mount namespace hides the machine's libvirt state
behind private directories (`/run`, `/etc/libvirt`, `/var/lib/libvirt`, `/var/cache/libvirt`,
`/var/log/libvirt`), so each libvirtd has its own sockets, domains, networks and pools. The hosts
share an underlay bridge (`clab0`, 198.18.13.0/24 from the RFC 2544 benchmarking range, which no
real network routes) with the root namespace at .1 and host N at .10+N; nothing is routed
beyond it. Clients reach the hosts with a key the lab generates and a known_hosts file it
writes, named in an ssh_config drop-in for that subnet only.

Everything lives under `LAB_DIR` (`/run/collective-lab`), described by `state.json`. `down()`
removes all of it, also after a half-finished `up()`: it finds leftovers by name (namespaces
`clab*`, the bridge, the mounts under LAB_DIR), not only through the state file.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

LAB_DIR = Path(os.environ.get("COLLECTIVE_LAB_DIR", "/run/collective-lab"))
STATE = LAB_DIR / "state.json"
SSH_DROP_IN = Path("/etc/ssh/ssh_config.d/collective-lab.conf")
BRIDGE = "clab0"
NETNS_PREFIX = "clab"
SUBNET = ipaddress.ip_network("198.18.13.0/24")
ROOT_IP = SUBNET.network_address + 1
MAX_HOSTS = 9
PRIVATE_DIRS = {  # inside path -> directory under the host's; /run last: LAB_DIR is under it
    "/etc/libvirt": "etc-libvirt",
    "/var/lib/libvirt": "lib",
    "/var/cache/libvirt": "cache",
    "/var/log/libvirt": "log",
    "/run": "run",
}
NEEDED = ["ip", "bridge", "unshare", "nsenter", "ssh-keygen", "ssh", "virsh", "virt-ssh-helper"]
NEEDED_SBIN = ["/usr/sbin/sshd", "/usr/sbin/libvirtd", "/usr/sbin/virtlogd"]


class LabError(RuntimeError):
    """The lab could not be made or inspected; the message says which step failed."""


@dataclass
class LabHost:
    """One lab host as the utility sees it: a name, an underlay address and a libvirt URI."""

    name: str
    netns: str
    ip: str
    uri: str
    directory: str
    mount_ns: str
    uts_ns: str
    pids: dict[str, int] = field(default_factory=dict)

    def nsenter(self) -> list[str]:
        """The command prefix that runs a program inside this host (net, mount, UTS)."""
        return [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            f"--mount={self.mount_ns}",
            f"--uts={self.uts_ns}",
            "--",
        ]


@dataclass
class Lab:
    """The whole lab: the underlay bridge, the client's key and known_hosts, the hosts."""

    bridge: str
    subnet: str
    root_ip: str
    keyfile: str
    known_hosts: str
    ssh_config: str
    hosts: list[LabHost]
    up_seconds: float = 0.0

    @classmethod
    def load(cls, path: Path = STATE) -> Lab:
        """The lab described by `path`; LabError when there is none."""
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise LabError(f"no lab is up ({path} is missing); run scripts/lab up N") from exc
        raw["hosts"] = [LabHost(**host) for host in raw["hosts"]]
        return cls(**raw)


@contextlib.contextmanager
def lab_lock() -> Iterator[None]:
    """One lab operation at a time on this machine (an exclusive flock on LAB_DIR's parent
    directory, so no lock file is left behind). A caller that already holds it (a test fixture
    running `scripts/lab` under its own lock) sets COLLECTIVE_LAB_LOCKED=1 to skip it."""
    if os.environ.get("COLLECTIVE_LAB_LOCKED") == "1":
        yield
        return
    fd = os.open(LAB_DIR.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def run(args: list[str], *, check: bool = True, timeout: float = 60) -> str:
    """Run a command; on failure raise LabError naming the command and its stderr."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def check_prerequisites() -> None:
    """Fail early, naming every missing program (Debian package in parentheses)."""
    missing = [name for name in NEEDED if shutil.which(name) is None]
    missing += [path for path in NEEDED_SBIN if not Path(path).exists()]
    if os.geteuid() != 0:
        raise LabError("scripts/lab needs root (namespaces, bridges, daemons)")
    if missing:
        raise LabError(
            "missing: " + ", ".join(missing) + " (apt-get install openssh-server openssh-client "
            "libvirt-daemon libvirt-clients iproute2 util-linux; or run scripts/setup)"
        )


def host_ip(index: int) -> str:
    return str(SUBNET.network_address + 10 + index)


# --- up ------------------------------------------------------------------------------------


def up(count: int) -> Lab:
    """Make a lab of `count` hosts (removing any leftovers first) and return its description."""
    if not 1 <= count <= MAX_HOSTS:
        raise LabError(f"host count must be between 1 and {MAX_HOSTS}, not {count}")
    check_prerequisites()
    if leftovers():
        down()
    started = time.monotonic()
    try:
        lab = _make(count)
        lab.up_seconds = round(time.monotonic() - started, 2)
        _write_atomic(STATE, json.dumps(asdict(lab), indent=2) + "\n")
        return lab
    except BaseException:
        with contextlib.suppress(LabError):  # report the first failure, not the clean-up's
            down()
        raise


def _make(count: int) -> Lab:
    LAB_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    LAB_DIR.chmod(0o755)  # qemu runs as libvirt-qemu and must reach the hosts' pools
    # Namespace files can only be bind-mounted onto a private mount (as ip-netns does).
    run(["mount", "--bind", str(LAB_DIR), str(LAB_DIR)])
    run(["mount", "--make-private", str(LAB_DIR)])
    keyfile = LAB_DIR / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "collective-lab", "-f", str(keyfile)])
    _make_bridge()
    hosts = [_make_host(index, keyfile) for index in range(1, count + 1)]
    known_hosts = LAB_DIR / "known_hosts"
    lines = [
        f"{h.ip} {Path(h.directory, 'run/lab/host_key.pub').read_text().strip()}" for h in hosts
    ]
    _write_atomic(known_hosts, "\n".join(lines) + "\n")
    _write_ssh_drop_in(keyfile, known_hosts)
    for host in hosts:
        _share_client_files(host, keyfile, known_hosts)
    for host in hosts:
        _wait_for_ssh(host)
    return Lab(
        bridge=BRIDGE,
        subnet=str(SUBNET),
        root_ip=str(ROOT_IP),
        keyfile=str(keyfile),
        known_hosts=str(known_hosts),
        ssh_config=str(SSH_DROP_IN),
        hosts=hosts,
    )


def _make_bridge() -> None:
    run(["ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0"])
    run(["ip", "addr", "add", f"{ROOT_IP}/{SUBNET.prefixlen}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def _make_host(index: int, keyfile: Path) -> LabHost:
    name = f"lab{index}"
    netns = f"{NETNS_PREFIX}{index}"
    ip = host_ip(index)
    directory = LAB_DIR / name
    host = LabHost(
        name=name,
        netns=netns,
        ip=ip,
        uri=f"qemu+ssh://root@{ip}/system",
        directory=str(directory),
        mount_ns=str(directory / "mnt.ns"),
        uts_ns=str(directory / "uts.ns"),
    )
    _make_underlay_link(host, index)
    _make_directories(host, keyfile)
    _make_namespaces(host)
    _start_daemons(host)
    return host


def _make_underlay_link(host: LabHost, index: int) -> None:
    outer = f"{NETNS_PREFIX}{index}u"
    run(["ip", "netns", "add", host.netns])
    run(
        [
            "ip",
            "link",
            "add",
            outer,
            "type",
            "veth",
            "peer",
            "name",
            "underlay0",
            "netns",
            host.netns,
        ]
    )
    run(["ip", "link", "set", outer, "master", BRIDGE, "up"])
    inside = ["ip", "-n", host.netns]
    run([*inside, "addr", "add", f"{host.ip}/{SUBNET.prefixlen}", "dev", "underlay0"])
    run([*inside, "link", "set", "underlay0", "up"])
    run([*inside, "link", "set", "lo", "up"])


def _make_directories(host: LabHost, keyfile: Path) -> None:
    """The host's private directories, its sshd configuration, host key and authorized key."""
    directory = Path(host.directory)
    for sub in PRIVATE_DIRS.values():
        (directory / sub).mkdir(parents=True, mode=0o755)
    for sub in (
        "run/libvirt",
        "run/sshd",
        "run/lab",
        "run/lock",
        "lib/images",
        "lib/dnsmasq",
        "log/qemu",
    ):
        (directory / sub).mkdir(parents=True, exist_ok=True, mode=0o755)
    (directory / "run/lab").chmod(0o700)
    etc = directory / "etc-libvirt"
    for item in Path("/etc/libvirt").iterdir():  # configuration only, none of the host's state
        if item.is_file():
            shutil.copy2(item, etc / item.name)
    for sub in ("qemu/networks/autostart", "storage/autostart", "secrets", "nwfilter"):
        (etc / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    lab = directory / "run/lab"
    run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            host.name,
            "-f",
            str(lab / "host_key"),
        ]
    )
    shutil.copy(keyfile.with_suffix(".pub"), lab / "authorized_keys")
    (lab / "authorized_keys").chmod(0o600)
    _write_atomic(lab / "sshd_config", _sshd_config(host.ip), 0o600)


def _sshd_config(ip: str) -> str:
    """sshd for one lab host: key-only root login on the underlay address, nothing else."""
    return "\n".join(
        [
            f"ListenAddress {ip}:22",
            "HostKey /run/lab/host_key",
            "PidFile /run/lab/sshd.pid",
            "AuthorizedKeysFile /run/lab/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "",
        ]
    )


def _make_namespaces(host: LabHost) -> None:
    """A persistent mount + UTS namespace whose libvirt directories are private to this host.

    The mount namespace starts as a copy of the machine's; the script drops the copies of other
    namespaces' files (so this host keeps none of them alive), mounts a sysfs that shows this
    host's network namespace (as `ip netns exec` does) and binds the private directories.
    """
    for ns_file in (host.mount_ns, host.uts_ns):
        Path(ns_file).touch()
    binds = " ".join(
        f"mount --rbind {host.directory}/{sub} {inside};" for inside, sub in PRIVATE_DIRS.items()
    )
    script = (
        "set -e; mount --make-rprivate /; "
        f"umount -l {LAB_DIR} 2>/dev/null || true; umount -l /run/netns 2>/dev/null || true; "
        f"hostname {host.name}; {binds}"
    )
    # nsenter, not `ip netns exec`: the latter runs in a throw-away mount namespace, where
    # unshare would bind the namespace files (and so they would vanish with it).
    run(
        [
            "nsenter", f"--net=/run/netns/{host.netns}",
            "unshare", f"--mount={host.mount_ns}", f"--uts={host.uts_ns}",
            "--propagation", "private", "sh", "-c", script,
        ]
    )  # fmt: skip
    # A sysfs mounted from inside the network namespace shows its interfaces (libvirt reads it).
    run([*host.nsenter(), "sh", "-c", "umount -l /sys && mount -t sysfs sysfs /sys"])


def _start_daemons(host: LabHost) -> None:
    """virtlogd, then libvirtd (each daemonises itself), then sshd; record their pids."""
    enter = host.nsenter()
    run([*enter, "/usr/sbin/virtlogd", "-d"])
    run([*enter, "/usr/sbin/libvirtd", "-d"])
    _wait(lambda: _local_virsh_ok(host), 60, f"libvirtd on {host.name} did not answer")
    run([*enter, "/usr/sbin/sshd", "-f", "/run/lab/sshd_config"])
    run_dir = Path(host.directory, "run")
    pidfiles = {"virtlogd": "virtlogd.pid", "libvirtd": "libvirtd.pid", "sshd": "lab/sshd.pid"}
    for name, pidfile in pidfiles.items():
        _wait(lambda p=pidfile: (run_dir / p).exists(), 20, f"{name} on {host.name} wrote no pid")
        host.pids[name] = int((run_dir / pidfile).read_text().split()[0])


def _local_virsh_ok(host: LabHost) -> bool:
    cmd = [*host.nsenter(), "virsh", "-c", "qemu:///system", "hostname"]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


def _share_client_files(host: LabHost, keyfile: Path, known_hosts: Path) -> None:
    """The lab's client key and known_hosts, at the same paths inside `host` (its /run is its
    own), so its libvirtd reaches the other hosts with the drop-in's settings: peer-to-peer
    migration, where the source's libvirtd connects to the target's over qemu+ssh."""
    try:
        inside = LAB_DIR.relative_to("/run")
    except ValueError:
        return  # LAB_DIR outside /run is the same directory inside every host
    target = Path(host.directory) / "run" / inside
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for source in (keyfile, known_hosts):
        shutil.copy2(source, target / source.name)
        (target / source.name).chmod(0o600)


def _write_ssh_drop_in(keyfile: Path, known_hosts: Path) -> None:
    """Client settings for the lab subnet only: the lab key, the lab's known_hosts, no prompts."""
    pattern = ".".join(str(ROOT_IP).split(".")[:3]) + ".*"
    text = "\n".join(
        [
            "# Written by scripts/lab (collective multi-host lab); removed by `scripts/lab down`.",
            f"Host {pattern}",
            "  User root",
            f"  IdentityFile {keyfile}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {known_hosts}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  PasswordAuthentication no",
            "  BatchMode yes",
            "  ConnectTimeout 10",
            "",
        ]
    )
    SSH_DROP_IN.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(SSH_DROP_IN, text)


def _wait_for_ssh(host: LabHost) -> None:
    def answers() -> bool:
        cmd = ["virsh", "-c", host.uri, "hostname"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return proc.returncode == 0 and proc.stdout.strip() == host.name

    _wait(answers, 30, f"{host.uri} did not answer over ssh")


def _wait(ready, seconds: float, message: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise LabError(message)
        time.sleep(0.2)


# --- down ----------------------------------------------------------------------------------


def lab_namespaces() -> list[str]:
    """Network namespaces the lab made (`clab<N>`), found by name."""
    names = run(["ip", "netns", "list"], check=False).split("\n")
    found = [line.split()[0] for line in names if line.strip()]
    return [n for n in found if n.startswith(NETNS_PREFIX) and n[len(NETNS_PREFIX) :].isdigit()]


def lab_links() -> list[str]:
    """The underlay bridge and the root-side veths, if present."""
    out = run(["ip", "-o", "link", "show"], check=False)
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n == BRIDGE or (n.startswith(NETNS_PREFIX) and n.endswith("u"))]


def lab_mounts() -> list[str]:
    """Mount points at or under LAB_DIR, deepest first."""
    out = run(["findmnt", "-rn", "-o", "TARGET"], check=False)
    mine = [m for m in out.splitlines() if m == str(LAB_DIR) or m.startswith(f"{LAB_DIR}/")]
    return sorted(set(mine), key=len, reverse=True)


def lab_pids() -> list[int]:
    """Every process inside a lab namespace (daemons, qemu, anything a test started there)."""
    pids: set[int] = set()
    for ns in lab_namespaces():
        pids |= {int(p) for p in run(["ip", "netns", "pids", ns], check=False).split()}
    return sorted(pids)


def leftovers() -> dict[str, list[str]]:
    """What a previous lab left on this machine, by kind; empty when the machine is clean."""
    found = {
        "namespaces": lab_namespaces(),
        "links": lab_links(),
        "mounts": lab_mounts(),
        "processes": [str(p) for p in lab_pids()],
        "files": [str(p) for p in (LAB_DIR, SSH_DROP_IN) if p.exists()],
    }
    return {kind: items for kind, items in found.items() if items}


def down() -> None:
    """Remove the lab: guests, daemons, namespaces, links, mounts, files. Safe to repeat."""
    _destroy_guests()
    _stop_processes(lab_pids())
    for mount in lab_mounts():
        run(["umount", "-l", mount], check=False)
    for ns in lab_namespaces():
        run(["ip", "netns", "del", ns], check=False)
    for link in lab_links():
        run(["ip", "link", "del", link], check=False)
    SSH_DROP_IN.unlink(missing_ok=True)
    if LAB_DIR.exists():
        shutil.rmtree(LAB_DIR)
    left = leftovers()
    if left:
        raise LabError(f"scripts/lab down left things behind: {left}")


def _destroy_guests() -> None:
    """Ask each host's libvirtd to stop its domains, so it cleans up after them itself."""
    try:
        hosts = Lab.load().hosts
    except (LabError, ValueError, TypeError):
        return
    for host in hosts:
        script = (
            "for d in $(virsh -c qemu:///system list --name); do "
            "virsh -c qemu:///system destroy $d; done"
        )
        subprocess.run(
            [*host.nsenter(), "sh", "-c", script], capture_output=True, timeout=60, check=False
        )


def _stop_processes(pids: list[int]) -> None:
    """SIGTERM, up to 5 s of grace, then SIGKILL for what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            _signal(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(is_running(pid) for pid in pids):
            time.sleep(0.1)


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no namespace; its parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- a host dies and comes back (failure tests) -------------------------------------------------


def kill_host(host: LabHost) -> list[int]:
    """The host dies as far as libvirt goes: every qemu process inside it is SIGKILLed, then
    its libvirtd (no clean-up by either); sshd, virtlogd and the host's links stay. Returns the
    qemu pids killed."""
    pids = [int(p) for p in run(["ip", "netns", "pids", host.netns], check=False).split()]
    guests = [p for p in pids if _comm(p).startswith("qemu")]
    for pid in [*guests, host.pids["libvirtd"]]:
        _signal(pid, signal.SIGKILL)
    _wait(
        lambda: not any(is_running(p) for p in [*guests, host.pids["libvirtd"]]),
        20,
        f"the processes of {host.name} did not die",
    )
    Path(host.directory, "run", "libvirtd.pid").unlink(missing_ok=True)
    return guests


def revive_libvirtd(host: LabHost) -> None:
    """Start the host's libvirtd again (after `kill_host`) and record its new pid in the lab's
    state, so that the lab counts as running."""
    pidfile = Path(host.directory, "run", "libvirtd.pid")
    run([*host.nsenter(), "/usr/sbin/libvirtd", "-d"])
    _wait(lambda: _local_virsh_ok(host), 60, f"libvirtd on {host.name} did not answer")
    _wait(pidfile.exists, 20, f"libvirtd on {host.name} wrote no pid")
    host.pids["libvirtd"] = int(pidfile.read_text().split()[0])
    lab = Lab.load()
    for each in lab.hosts:
        if each.name == host.name:
            each.pids["libvirtd"] = host.pids["libvirtd"]
    _write_atomic(STATE, json.dumps(asdict(lab), indent=2) + "\n")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --- status --------------------------------------------------------------------------------


def status() -> dict[str, object]:
    """The lab's state plus, per host, whether its daemons live and its URI answers over ssh."""
    lab = Lab.load()
    report = asdict(lab)
    for host, row in zip(lab.hosts, report["hosts"], strict=True):
        row["alive"] = {name: Path(f"/proc/{pid}").exists() for name, pid in host.pids.items()}
        proc = subprocess.run(
            ["virsh", "-c", host.uri, "hostname"], capture_output=True, text=True, timeout=30
        )
        row["answers"] = proc.returncode == 0 and proc.stdout.strip() == host.name
    return report
