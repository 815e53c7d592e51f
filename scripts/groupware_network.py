"""The paper's Groupware experiment end to end, shared by `scripts/demo`, the real-VM test
(`tests/integration/test_groupware.py`) and `scripts/benchmarks/bench_groupware.py`.

`GroupwareLab` drives only public interfaces, as a publisher, an administrator and a user would:
it builds the appliance images (`scripts/build-appliances`, cached), serves repositories with
real gunicorn, publishes every appliance with stock `git push` (git-lfs) and SSH-signed tags,
runs `cui utility serve` on loopback (trust: require-signed, the publisher's key), subscribes it to
the DNS repository, and starts AcmeGroupware with `cui start`. Host-side probes of the appliances
go only through two network namespaces it creates itself, each with a veth plugged into a bridge
the utility made for this VAP: "inside" on the VAN, "outside" on the public segment in front of
the firewall. Everything it made (domains, networks, namespaces, servers) is removed by `close()`.

On the multi-host lab (`lab_hosts`: hosts of `scripts/multihost_lab.py`), every lab host is
registered with `cui host add NAME --uri qemu+ssh://… --underlay IP` instead of the local host,
the VAN is stretched over the hosts by VXLAN, and each probe's veth is plugged into a bridge inside
the namespace of the lab host named: "inside" on the VAN's bridge of a host other than DNS's (so
its queries cross the VXLAN), "outside" on the public bridge of the firewall's host (the public
segment `col-x<id>` is per host, not stretched).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reposerver.repository import Repository  # noqa: E402
from reposerver.testing import Server, free_port, running_server  # noqa: E402

CUI = [sys.executable, "-m", "cui.main"]
APPLIANCES = {"h": "DHCP", "d": "DNS", "l": "LDAP", "m": "Mail", "w": "Web", "f": "Firewall"}
VARIANTS = ("DNS-v2", "DNS-bad", "Mail-v2")
ROOT_PASSWORD = "s3cret & more"  # the user's sensitive rootdnpass (given on stdin, never a file)
# Figure 5's four sensitive parameters, as the user gives them to the user agent (never a file).
SECRETS = {
    "rootdnpass": ROOT_PASSWORD,
    "proxypw": "proxy/pw #1",
    "smtppw": "smtp pw & 2",
    "rootpw": "root: pw 3",
}
# The paper's Figure 5: the 14 values a Groupware user sets (the four above among them).
FIGURE5 = frozenset(
    {
        *("hostname", "domain", "rootdnpass", "proxypw", "smtppw", "country", "state"),
        *("city", "org", "ou", "certemail", "defmailhost", "forwarders", "rootpw"),
    }
)
MAIL_USER = ("alice@acme.org", "alice's pw", "acme.org/alice/")  # address, password, Maildir
PUBLIC_NET = "198.51.100"  # the public pool (TEST-NET-2), only ever on the VAP's own bridge


class LabError(RuntimeError):
    """A step of the Groupware story failed; the message says which and why."""


def run(
    args: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise LabError with its stderr."""
    done = subprocess.run(
        args,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})},
        timeout=timeout,
    )
    if check and done.returncode:
        raise LabError(
            f"{' '.join(args[:5])} (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done


@dataclass
class Namespace:
    """A network namespace whose veth is plugged into one of the utility's bridges."""

    name: str
    host_end: str
    address: str
    host_netns: str | None = None  # the lab host's namespace holding `host_end`, if any

    def run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def dig(self, server: str, name: str, rtype: str = "A") -> list[str]:
        """`dig +short` from inside the namespace."""
        return self.run(
            ["dig", f"@{server}", name, rtype, "+short", "+time=2", "+tries=3"]
        ).stdout.splitlines()

    def fetch(self, url: str) -> str:
        """A page fetched from inside the namespace ("" if none)."""
        get = (
            "import sys,urllib.request\n"
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
        )
        return self.run([sys.executable, "-c", get, url]).stdout

    def connects(self, ip: str, port: int) -> bool:
        """Whether a TCP connection from the namespace to ip:port completes within 3 s."""
        probe = (
            "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], "
            "int(sys.argv[2])), timeout=3).close()\nexcept OSError:\n sys.exit(1)\n"
        )
        return self.run([sys.executable, "-c", probe, ip, str(port)]).returncode == 0


@dataclass
class GroupwareLab:
    """One Groupware network: repositories, the utility daemon, AcmeGroupware on `host_uri`."""

    work: Path
    host_uri: str = "qemu:///system"
    say: Callable[[str], None] = lambda _msg: None
    prefix: str = field(default_factory=lambda: "gw" + secrets.token_hex(2))
    ready_timeout: float = 240.0
    boot_order: str = "overlapped"  # `cui utility serve --boot-order`
    images: dict[str, Path] = field(default_factory=dict)
    server: Server | None = None
    env: dict[str, str] = field(default_factory=dict)
    cvl: Path | None = None
    key: Path | None = None
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    pushed: dict[str, int] = field(default_factory=dict)
    stack: ExitStack = field(default_factory=ExitStack)
    timings: dict[str, float] = field(default_factory=dict)
    daemon: subprocess.Popen[bytes] | None = None  # the `cui utility serve` process
    lab_hosts: list[Any] = field(default_factory=list)  # multihost_lab.LabHost, when on the lab
    serve_args: list[str] = field(default_factory=list)  # more `cui utility serve` options

    # -- setting up ---------------------------------------------------------------------------

    def build(self) -> None:
        """The five appliances and the DNS variants, from the image cache when unchanged."""
        out = self.work / "images"
        names = [*APPLIANCES.values(), *VARIANTS]
        began = time.monotonic()
        done = run(
            [
                str(ROOT / "scripts" / "build-appliances"),
                str(out),
                "--json",
                *(a for n in names for a in ("--only", n)),
            ],
            timeout=1800,
        )
        for line in done.stdout.splitlines():
            row = json.loads(line)
            self.images[row["appliance"]] = Path(row["dir"])
        self.timings["build"] = time.monotonic() - began

    def serve(self) -> None:
        """Empty repositories under gunicorn, and the publisher's SSH signing key."""
        from reposerver.trust import add_ssh_signer

        self.key = self.work / "publisher-key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "publisher", "-f", str(self.key)])
        signer = "publisher@example.org " + self.key.with_suffix(".pub").read_text().strip()
        root = self.work / "repos"
        for name in APPLIANCES.values():
            repo = Repository.create(root / name)
            add_ssh_signer(repo.path, signer)  # the server shows who signed each version
        # the utility listens on loopback: the server refuses that unless its config allows it
        loopback = {"allowed_subscriber_networks": ["127.0.0.0/8"]}
        self.server = self.stack.enter_context(running_server(root, workers=2, extra=loopback))

    def push(self, name: str, image: str, message: str) -> float:
        """Publish the built `image` as the next version of repository `name` with stock git:
        a commit (the disk through git-lfs; as a `cui delta` overlay after the first), an
        SSH-signed tag vN, `git push`. Returns when the push returned (time.time())."""
        assert self.server is not None and self.key is not None
        work = self.work / "publish" / name
        src = self.images[image]
        version = self.pushed.get(name, 0) + 1
        if version == 1:
            work.mkdir(parents=True)
            run(["git", "init", "-q", "-b", "main"], cwd=work)
            run(["git", "lfs", "install", "--local"], cwd=work)
            run(["git", "lfs", "track", "*.qcow2"], cwd=work)
            run(["git", "config", "lfs.locksverify", "false"], cwd=work)
            run(["git", "remote", "add", "origin", self.server.push_url(name)], cwd=work)
        for item in src.iterdir():
            if item.suffix == ".qcow2" and version > 1:
                # the previous version's object where git-lfs keeps it, so that its own
                # backing chain (`../../ab/cd/<sha256>`) resolves when it is itself a delta
                digest = hashlib.sha256((work / item.name).read_bytes()).hexdigest()
                parent = work / ".git" / "lfs" / "objects" / digest[:2] / digest[2:4] / digest
                run([*CUI, "delta", str(parent), str(item), str(work / item.name)])
            else:
                shutil.copyfile(item, work / item.name)
        run(["git", "add", "-A"], cwd=work)
        run(["git", "commit", "-q", "-m", message], cwd=work, env=_git_identity())
        run(
            [
                "git",
                "-c",
                "gpg.format=ssh",
                "-c",
                f"user.signingkey={self.key}",
                "tag",
                "-s",
                "-m",
                message,
                "-m",  # the binding the signature covers (README, Threat model)
                f"Collective-Repository: {name}\nCollective-Appliance: {name}",
                f"v{version}",
            ],
            cwd=work,
            env=_git_identity(),
        )
        run(["git", "push", "-q", "origin", "main", f"v{version}"], cwd=work)
        self.pushed[name] = version
        return time.time()

    def publish_all(self) -> None:
        for name in APPLIANCES.values():
            self.push(name, name, f"{name} 1")

    def start_utility(self) -> None:
        """`cui utility serve` on loopback with this host, pools, trust and a DNS subscription."""
        assert self.server is not None and self.key is not None
        state = self.work / "state"
        (self.work / "home").mkdir(mode=0o700, exist_ok=True)
        token = run(
            [*CUI, "utility", "token", "add", "admin", "--role", "admin", "--state", str(state)]
        ).stdout.strip()
        port = free_port()
        self.env = {
            "COLLECTIVE_UTILITY": f"http://127.0.0.1:{port}",
            "COLLECTIVE_TOKEN": token,
            "COLLECTIVE_AGENT_PASSWORD": "agent-" + secrets.token_hex(8),
            "COLLECTIVE_REPO_TOKEN": self.server.token,
            "HOME": str(self.work / "home"),
        }  # the user agent's cache stays in the lab
        self._spawn_daemon(state, port)
        vlan = 3000 + secrets.randbelow(900)
        third = 1 + secrets.randbelow(250)
        if self.lab_hosts:
            for host in self.lab_hosts:
                self.cui(
                    *("host", "add", host.name, "--uri", host.uri, "--memory", "4G"),
                    *("--max-vms", "8", "--underlay", host.ip),
                )
        else:
            self.cui(
                "host", "add", "local", "--uri", self.host_uri, "--memory", "4G", "--max-vms", "8"
            )
        self.cui("vlan", "add", f"{vlan}-{vlan + 1}")
        self.cui("publicip", "add", f"{PUBLIC_NET}.{third}-{PUBLIC_NET}.{third + 1}")
        (self.work / "publisher.signer").write_text(
            "publisher@example.org " + self.key.with_suffix(".pub").read_text()
        )
        for name in APPLIANCES.values():
            url = f"{self.server.url}/{name}"
            self.cui("utility", "trust", "require-signed", url)
            self.cui(
                "utility", "trust", "add-key", str(self.work / "publisher.signer"), "--url", url
            )
        self.cui("utility", "subscribe", f"{self.server.url}/DNS", "--user", self.server.user)

    def _spawn_daemon(self, state: Path, port: int) -> None:
        log = self.work / "utility.log"
        daemon_env = {k: v for k, v in os.environ.items() if k != "COLLECTIVE_EVENTS_SECRET"}
        with log.open("a") as out:
            began = out.tell()
            proc = subprocess.Popen(
                [
                    *CUI,
                    "utility",
                    "serve",
                    "--state",
                    str(state),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--prefix",
                    self.prefix,
                    "--ready-timeout",
                    str(self.ready_timeout),
                    "--stop-timeout",
                    "60",
                    "--boot-order",
                    self.boot_order,
                    *self.serve_args,
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=daemon_env,
            )
        self.stack.callback(_terminate, proc)
        self.daemon = proc
        deadline = time.monotonic() + 60
        while "listening on" not in log.read_text()[began:]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError("the utility daemon did not start:\n" + log.read_text())
            time.sleep(0.1)

    def restart_utility(self, boot_order: str) -> None:
        """Run the daemon again on the same state and port with another boot order."""
        assert self.daemon is not None
        _terminate(self.daemon)
        self.boot_order = boot_order
        self._spawn_daemon(self.work / "state", int(self.env["COLLECTIVE_UTILITY"].split(":")[-1]))

    def write_user_files(self) -> Path:
        """Groupware.cvl importing the published repositories, and the user's AcmeGroupware."""
        assert self.server is not None
        user = self.work / "user"
        user.mkdir(exist_ok=True)
        user.chmod(0o755)
        text = (ROOT / "examples" / "appliances" / "Groupware" / "Groupware.cvl").read_text()
        for name in APPLIANCES.values():
            text = text.replace(f'url => "file:../{name}"', f'url => "{self.server.url}/{name}"')
        (user / "Groupware.cvl").write_text(text)
        shutil.copyfile(
            ROOT / "examples" / "appliances" / "Groupware" / "AcmeGroupware.cvl",
            user / "AcmeGroupware.cvl",
        )
        self.cvl = user / "AcmeGroupware.cvl"
        return self.cvl

    # -- the user's commands ------------------------------------------------------------------

    def cui(self, *args: str, stdin: str | None = None, timeout: float = 900) -> str:
        return run([*CUI, *args], env=self.env, stdin=stdin, timeout=timeout).stdout

    def start(self) -> float:
        """`cui start` AcmeGroupware (the sensitive values given to the user agent first, with
        `cui agent set`, as a user would); its seconds."""
        assert self.cvl is not None
        for key, value in SECRETS.items():
            self.cui("agent", "set", key, "--cvl", str(self.cvl), stdin=value + "\n")
        began = time.monotonic()
        self.stack.callback(self._stop_quietly)
        self.cui("start", str(self.cvl), "--json")
        self.timings["start"] = time.monotonic() - began
        return self.timings["start"]

    def status(self) -> dict[str, dict[str, object]]:
        """Component path -> its status row."""
        assert self.cvl is not None
        vap = json.loads(self.cui("status", str(self.cvl), "--json"))[0]
        return {c["path"]: c for c in vap["components"]}

    def vap(self) -> dict[str, object]:
        assert self.cvl is not None
        return json.loads(self.cui("status", str(self.cvl), "--json"))[0]  # type: ignore[no-any-return]

    def vm_dir(self, component: str) -> Path:
        """Where the utility keeps a component's VM directory (console log, disks): its own
        storage, `<state>/vaps/<VAP id>/<component>`, not next to the CVL file."""
        vaps = self.work / "state" / "vaps"
        found = sorted(vaps.glob(f"*/{component}"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else vaps / "unknown" / component

    def param(self, component: str, key: str) -> str:
        values = self.status()[component]["params"]  # type: ignore[index]
        return str(values[key][0])  # type: ignore[index]

    def set_forwarders(self, *addresses: str) -> None:
        """Rewrite the user's `forwarders` (a user's edit of their own CVL file)."""
        assert self.cvl is not None
        text = self.cvl.read_text()
        start = text.index("forwarders = ")
        end = text.index(";", start)
        values = ", ".join(f'"{a}"' for a in addresses)
        self.cvl.write_text(text[:start] + f"forwarders = {values}" + text[end:])

    def update(self) -> dict[str, object]:
        """`cui update` the user's file (sensitive values from the lab's user agent cache)."""
        assert self.cvl is not None
        return json.loads(self.cui("update", str(self.cvl), "--json"))  # type: ignore[no-any-return]

    def domain_ids(self) -> dict[str, int]:
        """Component path -> the libvirt ID of its running domain (new on every boot)."""
        ids = {}
        for path, row in self.status().items():
            if self.host_uri.startswith("qemu"):
                uri = self.uri_of(str(row["host"]))
                out = run(["virsh", "-c", uri, "domid", str(row["domain"])]).stdout
                ids[path] = int(out.strip())
            else:
                ids[path] = int(float(str(row["started"])) * 1000)
        return ids

    def lab_host(self, name: str) -> Any:
        """The lab host called `name` (a multihost_lab.LabHost)."""
        for host in self.lab_hosts:
            if host.name == name:
                return host
        raise LabError(f"{name} is not a lab host of this run")

    def uri_of(self, host: str) -> str:
        """The libvirt URI of the utility's host `host`."""
        return self.lab_host(host).uri if self.lab_hosts else self.host_uri

    def hosts_of(self) -> dict[str, str]:
        """Component path -> the host it was placed on."""
        return {path: str(row["host"]) for path, row in self.status().items()}

    def _stop_quietly(self) -> None:
        if self.cvl is not None:
            run([*CUI, "stop", str(self.cvl)], env=self.env, check=False, timeout=600)

    # -- where the host may talk to the appliances --------------------------------------------

    def plug(
        self, label: str, bridge: str, address: str, host_netns: str | None = None
    ) -> Namespace:
        """A namespace with a veth into `bridge`, holding `address` (/24); the bridge is in the
        network namespace `host_netns` (a lab host's) when given, else on this machine. The veth
        takes the bridge's MTU (1450 on a VXLAN-stretched segment)."""
        tag = secrets.token_hex(2)
        ns = Namespace(
            f"{self.prefix}{label}{tag}", f"{self.prefix}{label[0]}h{tag}", address, host_netns
        )
        inner = f"{self.prefix}{label[0]}n{tag}"
        self.stack.callback(_unplug, ns)
        outer = ["ip", "-n", host_netns] if host_netns else ["ip"]
        mtu = str(json.loads(run([*outer, "-j", "link", "show", bridge]).stdout)[0]["mtu"])
        for step in (
            ["ip", "netns", "add", ns.name],
            [*outer, "link", "add", ns.host_end, "mtu", mtu, "type", "veth", "peer", "name", inner],
            [*outer, "link", "set", inner, "netns", ns.name],
            ["ip", "-n", ns.name, "addr", "add", f"{address}/24", "dev", inner],
            ["ip", "-n", ns.name, "link", "set", inner, "mtu", mtu, "up"],
            ["ip", "-n", ns.name, "link", "set", "lo", "up"],
            [*outer, "link", "set", ns.host_end, "master", bridge],
            [*outer, "link", "set", ns.host_end, "up"],
        ):
            run(step)
        self.namespaces[label] = ns
        return ns

    def plug_both(self) -> tuple[Namespace, Namespace]:
        """ "inside" on the VAN's bridge (.250), "outside" on the public bridge (.250)."""
        status = self.status()
        van_ip = self.param("d", "ethernet0.ip")
        public_ip = self.param("f", "ethernet1.ip")
        if not self.lab_hosts:
            van_bridge = _bridge_of(status["d"], "ethernet0", self.host_uri)
            public_bridge = _bridge_of(status["f"], "ethernet1", self.host_uri)
            inside = self.plug("in", van_bridge, _host_250(van_ip))
            outside = self.plug("out", public_bridge, _host_250(public_ip))
            return inside, outside
        # the VAN probe on a host carrying VMs of the VAN (it has the VAN's bridge there) but
        # neither DNS nor, where possible, LDAP: its queries cross VXLAN; the public probe where
        # the firewall runs (the public segment is per host)
        used = {str(r["host"]) for r in status.values()}
        rank = {str(status["d"]["host"]): 2, str(status["l"]["host"]): 1}
        van_host = min(
            (h for h in self.lab_hosts if h.name in used), key=lambda h: rank.get(h.name, 0)
        )
        on_van = [r for r in status.values() if str(r["host"]) == van_host.name]
        van_bridge = _bridge_of(on_van[0], "ethernet0", van_host.uri)
        fw_host = self.lab_host(str(status["f"]["host"]))
        public_bridge = _bridge_of(status["f"], "ethernet1", fw_host.uri)
        inside = self.plug("in", van_bridge, _host_250(van_ip), van_host.netns)
        outside = self.plug("out", public_bridge, _host_250(public_ip), fw_host.netns)
        return inside, outside

    # -- mail and certificates, as a user outside the firewall sees them ----------------------

    def ca_certificate(self) -> Path:
        """The VAN's CA certificate as a user fetches it: `http://<public address>/ca.crt`,
        from the outside namespace."""
        public = self.param("f", "ethernet1.ip")
        text = self.namespaces["out"].fetch(f"http://{public}/ca.crt")
        if not text.startswith("-----BEGIN CERTIFICATE-----"):
            raise LabError(f"no CA certificate at http://{public}/ca.crt")
        path = self.work / "ca.crt"
        path.write_text(text)
        return path

    def add_mail_user(self) -> None:
        """MAIL_USER (alice) with her Maildir location, added to LDAP by the directory's
        administrator (the root DN, rootdnpass) from the VAN."""
        address, password, mailbox = MAIL_USER
        ldif = (
            "dn: uid=alice,ou=people,dc=acme,dc=org\nobjectClass: inetOrgPerson\n"
            "objectClass: extensibleObject\nuid: alice\ncn: Alice\nsn: Example\n"
            f"mail: {address}\nuserPassword: {password}\nmailbox: {mailbox}\n"
        )
        ldap = self.param("l", "ethernet0.ip")
        add = 'printf "%s" "$0" | ldapadd -x -H "ldap://$1" -D cn=admin,dc=acme,dc=org -w "$2"'
        done = self.namespaces["in"].run(["sh", "-c", add, ldif, ldap, ROOT_PASSWORD])
        if done.returncode not in (0, 68):  # 68: already there
            raise LabError(f"ldapadd alice: {done.stderr.strip()}")

    def mail(
        self, action: str, password: str, subject: str = "", cafile: Path | None = None
    ) -> dict[str, object]:
        """`scripts/mail_probe.py ACTION` as MAIL_USER from the outside namespace, through the
        firewall's public address, TLS verified for m.acme.org against the VAN's CA (or
        `cafile`)."""
        done = self.namespaces["out"].run(
            [
                sys.executable,
                str(ROOT / "scripts" / "mail_probe.py"),
                action,
                self.param("f", "ethernet1.ip"),
                "m.acme.org",
                str(cafile or self.work / "ca.crt"),
                MAIL_USER[0],
                password,
                subject,
            ]
        )
        try:
            return json.loads(done.stdout)  # type: ignore[no-any-return]
        except json.JSONDecodeError:
            return {"error": done.stderr.strip()[-500:]}

    def wait_mail(self, action: str, subject: str, timeout: float = 30) -> list[str]:
        """The subjects in MAIL_USER's mailbox once `subject` is among them (delivery is
        asynchronous); raises LabError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.mail(action, MAIL_USER[1])
            subjects = [str(x) for x in found.get("subjects", [])]  # type: ignore[attr-defined]
            if subject in subjects:
                return subjects
            if time.monotonic() > deadline:
                raise LabError(f"{subject!r} not in the mailbox over {action}: {found}")
            time.sleep(1)

    # -- reading the guests' consoles ---------------------------------------------------------

    def events(self, component: str) -> list[tuple[float, str, str]]:
        """The agent's console milestones of a component: (epoch, event, details)."""
        assert self.cvl is not None
        console = self.vm_dir(component) / "console.log"
        found = []
        text = console.read_text(errors="replace") if console.exists() else ""
        for line in text.splitlines():
            at = line.find("collective-agent ")
            if at >= 0:
                parts = line[at:].split(" ", 3)
                if len(parts) >= 3:
                    try:
                        found.append(
                            (float(parts[1]), parts[2], parts[3] if len(parts) > 3 else "")
                        )
                    except ValueError:
                        continue
        return found

    def wait_event(
        self, component: str, event: str, count: int = 1, timeout: float = 30
    ) -> list[tuple[float, str, str]]:
        """Wait until the console shows `event` `count` times (the console lags the channel)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(component) if e[1] == event]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise LabError(f"no {count}x {event} on the console of {component}")
            time.sleep(0.2)

    def history(self) -> list[dict[str, object]]:
        assert self.cvl is not None
        return json.loads(self.cui("history", str(self.cvl), "--json"))  # type: ignore[no-any-return]

    def wait_history(self, count: int, timeout: float) -> dict[str, object]:
        """Wait for the `count`-th update record; return it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.history()
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                raise LabError(f"no update record #{count} within {timeout:.0f} s")
            time.sleep(1)

    def update_events(self) -> list[tuple[float, str]]:
        """(time, kind) of the daemon's recorded events, oldest first."""
        from utility.adapters.store import Store

        return [(float(str(e["at"])), str(e["kind"])) for e in Store(self.work / "state").events()]

    def boot_times(self) -> dict[str, dict[str, float]]:
        """Per VM path, the host-clock time of its first `booting`, `parameters sent` and
        `ready` (the utility's boot events; comparable across VMs, unlike guest clocks)."""
        from utility.adapters.store import Store

        times: dict[str, dict[str, float]] = {}
        for e in Store(self.work / "state").events():
            if e["kind"] != "boot":
                continue
            path, _, what = str(e["text"]).partition(": ")
            times.setdefault(path, {}).setdefault(what, float(str(e["at"])))
        return times

    def close(self) -> None:
        """Stop the VAP, remove namespaces, stop the daemon and the server; then sweep anything
        still carrying this lab's prefix (domains, networks)."""
        try:
            self.stack.close()
        finally:
            for host in self.lab_hosts:
                sweep(self.prefix, host.uri)
            sweep(self.prefix, self.host_uri)


def _git_identity() -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": "Publisher",
        "GIT_AUTHOR_EMAIL": "publisher@example.org",
        "GIT_COMMITTER_NAME": "Publisher",
        "GIT_COMMITTER_EMAIL": "publisher@example.org",
    }


def _host_250(ip: str) -> str:
    return str(ipaddress.IPv4Network(f"{ip}/24", strict=False).network_address + 250)


def _bridge_of(component: object, iface: str, uri: str) -> str:
    """The bridge a component's interface is on, from its libvirt domain XML on host `uri`
    (through its libvirt network when the NIC names one)."""
    import xml.etree.ElementTree as ET

    domain = str(component["domain"])  # type: ignore[index]
    xml = run(["virsh", "-c", uri, "dumpxml", domain]).stdout
    index = int(iface.removeprefix("ethernet"))
    nic = ET.fromstring(xml).findall("devices/interface")[index]
    source = nic.find("source")
    assert source is not None
    if source.get("bridge"):
        return str(source.get("bridge"))
    net = run(["virsh", "-c", uri, "net-dumpxml", str(source.get("network"))]).stdout
    bridge = ET.fromstring(net).find("bridge")
    assert bridge is not None
    return str(bridge.get("name"))


def _unplug(ns: Namespace) -> None:
    outer = ["ip", "-n", ns.host_netns] if ns.host_netns else ["ip"]
    subprocess.run([*outer, "link", "del", ns.host_end], capture_output=True)
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def sweep(prefix: str, uri: str = "qemu:///system") -> list[str]:
    """Destroy every libvirt domain and network, and delete every namespace, named `prefix…`
    (the last line of cleanup, also after a crash). Returns what it removed."""
    removed = []
    try:
        import libvirt

        conn = libvirt.open(uri)
    except Exception:  # noqa: BLE001 - nothing to sweep where libvirt is unusable
        conn = None
    if conn is not None:
        for item in [*conn.listAllDomains(), *conn.listAllNetworks()]:
            if item.name().startswith(prefix):
                try:
                    item.destroy()
                    removed.append(item.name())
                except Exception:  # noqa: BLE001
                    pass
                try:
                    item.undefine()
                except Exception:  # noqa: BLE001
                    pass
        conn.close()
    for line in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True
    ).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed


@contextmanager
def lab(
    host_uri: str = "qemu:///system",
    say: Callable[[str], None] = lambda _m: None,
    keep: Path | None = None,
    lab_hosts: list[Any] | None = None,
) -> Iterator[GroupwareLab]:
    """A GroupwareLab in a fresh world-traversable directory (qemu must reach its disks),
    closed and removed afterwards (its consoles copied to `keep` first, when given)."""
    work = Path(tempfile.mkdtemp(prefix="gw-", dir="/var/tmp"))
    work.chmod(0o755)
    made = GroupwareLab(work, host_uri=host_uri, say=say, lab_hosts=list(lab_hosts or []))
    try:
        yield made
    finally:
        try:
            if keep is not None and made.cvl is not None:
                keep.mkdir(parents=True, exist_ok=True)
                for console in (work / "state" / "vaps").glob("*/*/console.log"):
                    shutil.copyfile(console, keep / f"{made.prefix}-{console.parent.name}.log")
                shutil.copyfile(work / "utility.log", keep / f"{made.prefix}-utility.log")
        except OSError:
            pass
        made.close()
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def started_on_lab(
    lab_hosts: list[Any],
    keep: Path | None = None,
    serve_args: tuple[str, ...] = (),
    plug: bool = True,
) -> Iterator[GroupwareLab]:
    """AcmeGroupware started on `lab_hosts` (multihost_lab.LabHost) and every appliance READY,
    the probes plugged in when `plug`: the set-up the lab tests and benchmarks share. `serve_args`
    are more `cui utility serve` options (e.g. `--backup-interval 20`)."""
    with lab(keep=keep, lab_hosts=lab_hosts) as g:
        g.ready_timeout = 300.0  # per VM: TCG on two cores shared with the lab hosts
        g.serve_args = list(serve_args)
        g.build()
        g.serve()
        g.publish_all()
        g.start_utility()
        g.write_user_files()
        g.start()
        if plug:
            g.plug_both()
        yield g


class DnsProbe:
    """Queries DNS from a namespace once a second in a thread (`dig +time=1 +tries=1`, so a
    query is lost, not retried, when no answer comes within a second); `lost` lists the
    seconds (from the start) of the queries that got no right answer."""

    def __init__(self, ns: Namespace, server: str, name: str, expect: list[str]) -> None:
        self.ns, self.server, self.name, self.expect = ns, server, name, expect
        self.sent: list[float] = []
        self.lost: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._began = 0.0

    def __enter__(self) -> DnsProbe:
        self._began = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        query = ["dig", f"@{self.server}", self.name, "+short", "+time=1", "+tries=1"]
        next_at = time.monotonic()
        while not self._stop.is_set():
            at = time.monotonic() - self._began
            try:
                answer = self.ns.run(query, timeout=5).stdout.split()
            except subprocess.TimeoutExpired:
                answer = []
            self.sent.append(at)
            if answer != self.expect:
                self.lost.append(at)
            next_at += 1.0
            self._stop.wait(max(0.0, next_at - time.monotonic()))


# -- the README demo (`scripts/demo` runs this after setting up) -------------------------------


def _step(text: str) -> None:
    print(f"\n\033[1;34m==> {text}\033[0m", flush=True)


def _show(text: str) -> None:
    print("    " + text.rstrip().replace("\n", "\n    "), flush=True)


def demo_on_lab(count: int) -> None:
    """The Groupware story on a multi-host lab of `count` hosts (`scripts/demo --hosts N`):
    the lab is brought up first (holding its machine-wide lock) and down afterwards."""
    import multihost_lab

    with multihost_lab.lab_lock():
        _step(f"the multi-host lab: {count} hosts (namespaces with libvirtd and sshd)")
        made = multihost_lab.up(count)
        os.environ["COLLECTIVE_LAB_LOCKED"] = "1"  # held here for the whole story
        try:
            for host in made.hosts:
                _show(f"{host.name}: {host.uri} (underlay {host.ip})")
            demo(made.hosts[0].uri, made.hosts)
        finally:
            _step("scripts/lab down")
            multihost_lab.down()
            left = multihost_lab.leftovers()
            _show("the lab left nothing behind" if not any(left.values()) else f"left: {left}")


def demo(host_uri: str, lab_hosts: list[Any] | None = None) -> None:
    """The Groupware story with progress output; on `test:` hosts, without guests to probe;
    on `lab_hosts` (multihost_lab.LabHost), split over them."""
    if host_uri == "test":
        from utility.adapters.simulation import simulated_host_uri

        sim = Path(tempfile.mkdtemp(prefix="gw-sim-"))
        try:
            demo(simulated_host_uri(sim, "local"))
        finally:
            shutil.rmtree(sim, ignore_errors=True)
        return
    real = host_uri.startswith("qemu")
    began = time.monotonic()
    with lab(host_uri=host_uri, lab_hosts=lab_hosts) as g:
        _step("building the appliance images from Debian packages (cached)")
        g.build()
        sizes = {
            n: sum(f.stat().st_size for f in g.images[n].glob("*.qcow2")) / 2**20
            for n in APPLIANCES.values()
        }
        _show(
            f"{len(g.images)} images in {g.timings['build']:.1f} s; program disks: "
            + ", ".join(f"{n} {mib:.1f} MiB" for n, mib in sizes.items())
            + " (the paper's: about 500 MB each)"
        )
        _step("repository server (gunicorn on loopback); publishing with git push + signed tags")
        g.serve()
        g.publish_all()
        assert g.server is not None
        for name in APPLIANCES.values():
            _show(run([*CUI, "versions", f"{g.server.url}/{name}"]).stdout.strip())
        _step("the Collective Utility: cui utility serve (require-signed, subscribed to DNS)")
        g.start_utility()
        where = ", ".join(h.name for h in g.lab_hosts) if g.lab_hosts else host_uri
        _show(f"daemon at {g.env['COLLECTIVE_UTILITY']}, hosts {where}, prefix {g.prefix}")
        cvl = g.write_user_files()
        _step(
            f"cui start {cvl.name}: six VMs in dependency order"
            + (" (qemu, TCG)" if real else " (test driver: no guests boot)")
        )
        _show(cvl.read_text().split("*/", 1)[-1].strip())
        seconds = g.start()
        _show(f"every appliance ready {seconds:.1f} s after cui start")
        _step("cui status")
        _show(g.cui("status", str(cvl)))
        if real:
            inside, outside = g.plug_both()
            if g.lab_hosts:
                placed = g.hosts_of()
                _show(
                    "placed (spread): "
                    + ", ".join(f"{p} on {h}" for p, h in sorted(placed.items()))
                    + f"; probe {inside.name} on the VAN's bridge of a host without DNS, "
                    f"{outside.name} on the public bridge of the firewall's host {placed['f']}"
                )
            dns, ldap = g.param("d", "ethernet0.ip"), g.param("l", "ethernet0.ip")
            public = g.param("f", "ethernet1.ip")
            _step(f"from namespace {inside.name} on the VAN's bridge: dig @{dns} l.acme.org")
            _show(" ".join(inside.dig(dns, "l.acme.org")) + f"   (LDAP's assigned address: {ldap})")
            _step(f"ldapsearch against LDAP at {ldap} (root DN from domain, rootdnpass sensitive)")
            _show(
                inside.run(
                    [
                        "ldapsearch",
                        "-x",
                        "-LLL",
                        "-H",
                        f"ldap://{ldap}",
                        "-D",
                        "cn=admin,dc=acme,dc=org",
                        "-w",
                        ROOT_PASSWORD,
                        "-b",
                        "dc=acme,dc=org",
                        "(objectClass=organizationalUnit)",
                        "dn",
                    ]
                ).stdout
            )
            _step(
                f"from namespace {outside.name} outside: the web page through the firewall "
                f"at {public}"
            )
            _show(outside.fetch(f"http://{public}/"))
            _show(
                f"port 8053 (not a service) through the firewall: "
                f"{'open' if outside.connects(public, 8053) else 'dropped'}"
            )
            _step(f"the VAN's CA certificate, as a user fetches it: http://{public}/ca.crt")
            ca = g.ca_certificate()
            _show(
                run(
                    [
                        "openssl",
                        "x509",
                        "-in",
                        str(ca),
                        "-noout",
                        "-subject",
                        "-fingerprint",
                        "-sha256",
                    ]
                ).stdout.strip()
            )
            _step("mail: alice added to LDAP; SMTP from outside through the firewall (STARTTLS)")
            g.add_mail_user()
            _show(f"send: {g.mail('send', MAIL_USER[1], 'Hello from outside')}")
            _show("IMAPS (993), certificate verified against the VAN's CA for m.acme.org: ")
            _show(f"  subjects {g.wait_mail('imaps', 'Hello from outside')}")
            _show(f"POP3S (995): {g.mail('pop3s', MAIL_USER[1])}")
            _step("a record written to DNS's data disk (its admin port, from the VAN)")
            _show(inside.fetch(f"http://{dns}:8053/cgi-bin/records?name=kept&ip=192.0.2.7"))
            _show("dig kept.acme.org: " + " ".join(inside.dig(dns, "kept.acme.org")))
        ids = g.domain_ids()
        _step("publishing DNS v2 (git push + signed tag); the utility updates automatically")
        count = len(g.history())
        pushed = g.push("DNS", "DNS-v2", "DNS 2: data format 2")
        record = g.wait_history(count + 1, timeout=2 * g.ready_timeout)
        _show(
            f"history: {record['trigger']} {record['actions']} -> {record['result']} "
            f"({float(str(record['at'])) - pushed:.1f} s after git push returned)"
        )
        after = g.domain_ids()
        for path in sorted(after):
            _show(f"{path}: domain {'restarted' if after[path] != ids[path] else 'unchanged'}")
        if real:
            _show(
                "dig appliance.acme.org TXT: "
                + " ".join(inside.dig(dns, "appliance.acme.org", "TXT"))
            )
            _show(
                "dig kept.acme.org (written before the update): "
                + " ".join(inside.dig(dns, "kept.acme.org"))
            )
        _step("cui status")
        _show(g.cui("status", str(cvl)))
        _step("stopping everything: cui stop, namespaces, daemon, repository server")
    leftovers = [x for h in g.lab_hosts for x in sweep(g.prefix, h.uri)] + sweep(g.prefix, host_uri)
    _show("nothing left running" if not leftovers else f"swept {leftovers}")
    _step(f"demo done in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, str(ROOT / "scripts"))
    parser = argparse.ArgumentParser(description="the Groupware demo story")
    parser.add_argument("host", nargs="?", default="qemu:///system", help="libvirt URI or 'test'")
    parser.add_argument("--hosts", type=int, default=0, help="run on a multi-host lab of N hosts")
    args = parser.parse_args()
    if args.hosts:
        demo_on_lab(args.hosts)
    else:
        demo(args.host)
