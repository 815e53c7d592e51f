"""The Collective Utility's commands: the daemon, administration, start/stop/status, the agent.

    cui utility serve --state DIR [--listen HOST:PORT]     the cluster manager daemon
    cui utility token add NAME [--role user|admin] [--json] a bearer token (printed once)
    cui utility token list [--json] | token revoke NAME     names, roles, created; revoke
    cui utility subscribe URL | unsubscribe URL | subscriptions   publish events of a repository
    cui host add NAME --uri URI --memory SIZE --max-vms N [--underlay IP]
    cui host list | host remove NAME
    cui vlan add 100-163 | cui publicip add A-B
    cui blacklist add URL VERSION|all | list | remove | violations
    cui start FILE.cvl [--name NAME] | cui stop NAME [COMP] | cui status [NAME] [--json]
    cui update NAME [FILE.cvl] [COMP] [--dry-run] [--json] | cui show NAME | cui history [NAME]
    (NAME: a VAP's name, OWNER/NAME for administrators, or a .cvl file meaning its stem)
    cui agent set KEY --cvl FILE.cvl | agent list | agent forget KEY --cvl FILE.cvl

Every client command takes `--utility URL` (default `$COLLECTIVE_UTILITY`, else the local
daemon's socket) and `--token-file PATH` (`-` reads standard input; default
`$COLLECTIVE_TOKEN`). A token is a secret, so it is never a flag value (flags show in `ps`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from utility.client.daemon_client import UtilityClient, default_state_dir

if TYPE_CHECKING:
    from utility.client import secret_cache


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --utility and --token-file, and pass a ready `UtilityClient` as `client`."""

    @click.option(
        "--utility",
        "utility_url",
        metavar="URL",
        default=None,
        help="Cluster manager: unix:///PATH, https://HOST:PORT or http://HOST:PORT "
        "(default $COLLECTIVE_UTILITY, else the local daemon's socket).",
    )
    @click.option(
        "--ca-file",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        help="CA certificate(s) to verify an https daemon with (default $COLLECTIVE_CA).",
    )
    @click.option(
        "--token-file",
        type=click.File("r"),
        default=None,
        help="File holding the bearer token, '-' for standard input (default $COLLECTIVE_TOKEN).",
    )
    @functools.wraps(fn)
    def wrapper(
        *args: Any, utility_url: str | None, token_file: Any, ca_file: str | None, **kwargs: Any
    ) -> Any:
        token = read_secret(token_file) if token_file is not None else None
        return fn(*args, client=UtilityClient(utility_url, token, ca_file=ca_file), **kwargs)

    return wrapper


def read_secret(stream: Any) -> str:
    """The first line of a secret file or stream, without its line end; empty is a usage error."""
    value = stream.readline().rstrip("\r\n")
    if not value:
        raise click.UsageError(f"{stream.name}: no secret on its first line")
    return str(value)


def echo_lines(lines: Iterable[str]) -> None:
    """Print each line."""
    for line in lines:
        click.echo(line)


def emit(data: Any, as_json: bool, render: Callable[[Any], object]) -> None:
    """Print `data` as JSON for tools or through `render` for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        render(data)


# -- daemon ---------------------------------------------------------------------------------------


def _seconds(name: str, default: float, text: str) -> Any:
    """A `cui utility serve` option of seconds (0 or more, default shown)."""
    return click.option(
        name, type=click.FloatRange(min=0), default=default, show_default=True, help=text
    )


@click.group("utility")
def utility_group() -> None:
    """The cluster manager daemon and its tokens."""


@utility_group.command("serve")
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="State directory (default $COLLECTIVE_STATE, else ~/.local/state/collective/utility).",
)
@click.option(
    "--listen",
    default=None,
    metavar="HOST:PORT",
    help="Serve on TCP (bearer token required; plain TCP only on loopback, else give "
    "--tls-cert and --tls-key); default the Unix socket in --state.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM certificate (chain) for https on --listen.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--event-window",
    type=click.FloatRange(1, 86400),
    default=600.0,
    show_default=True,
    help="Seconds a publish event stays acceptable (older ones and replays are refused).",
)
@click.option(
    "--placement",
    type=click.Choice(["spread", "pack"]),
    default="spread",
    show_default=True,
    help="Placement policy (see utility/placement.py).",
)
@click.option(
    "--prefix",
    default="col",
    show_default=True,
    help="Prefix of domain, network and bridge names (1-6 characters).",
)
@click.option(
    "--address-base",
    default="10.0.0.0/8",
    show_default=True,
    help="The /8 that VAN subnets 10.A.B.0/24 come from.",
)
@click.option(
    "--default-host",
    default=None,
    metavar="URI",
    help="URI of the embedded host used when none is registered (default: probe).",
)
@click.option(
    "--stop-timeout",
    type=float,
    default=180.0,
    show_default=True,
    help="Seconds a clean shutdown may take before the VM is forced off.",
)
@click.option(
    "--ready-timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds a VM may take to signal READY before the start fails.",
)
@click.option(
    "--events-secret-env",
    default="COLLECTIVE_EVENTS_SECRET",
    show_default=True,
    help="Environment variable holding the publish events' shared HMAC secret "
    "(events are refused when it is unset).",
)
@click.option(
    "--poll-interval",
    type=float,
    default=None,
    help="Also poll unpinned imports' repositories every this many seconds.",
)
@click.option(
    "--boot-order",
    type=click.Choice(["overlapped", "strict"]),
    default="overlapped",
    show_default=True,
    help="overlapped: boot every VM of a start or update at once and hold each one's "
    "parameters until the appliances it requires are READY; strict: boot a VM only after "
    "they are READY.",
)
@_seconds(
    "--check-interval",
    10.0,
    "Check every VM this often (seconds; libvirt lifecycle events wake the check sooner); "
    "a VM that stopped on its own is marked crashed and restarted. 0 turns the check off.",
)
@_seconds(
    "--host-grace",
    30.0,
    "Seconds a host's libvirt connection may fail (keepalive, the periodic check) before "
    "the host is failed and its VMs are restarted elsewhere; it is suspect meanwhile.",
)
@_seconds(
    "--rebalance-interval",
    0.0,
    "Rebalance memory use across hosts with live migrations this often (seconds); "
    "0 turns the automatic rebalance off (cui rebalance still works).",
)
@_seconds(
    "--backup-interval",
    600.0,
    "Back up every running VM's data disks through libvirt this often (seconds; also "
    "after every applied update); a VM restarted after its host failed gets the latest. "
    "0 turns the periodic backups off.",
)
@click.option(
    "--backup-keep",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Backup generations kept per data disk.",
)
@click.option(
    "--reinitialise",
    is_flag=True,
    help="Move a missing, corrupt or unreadable state database aside and start empty "
    "(only after restoring from a backup is impossible).",
)
def serve_command(
    tls_cert: str | None,
    tls_key: str | None,
    event_window: float,
    reinitialise: bool,
    state_dir: str | None,
    listen: str | None,
    placement: str,
    prefix: str,
    address_base: str,
    default_host: str | None,
    stop_timeout: float,
    ready_timeout: float,
    events_secret_env: str,
    poll_interval: float | None,
    check_interval: float,
    boot_order: str,
    host_grace: float = 30.0,
    rebalance_interval: float = 0.0,
    backup_interval: float = 600.0,
    backup_keep: int = 3,
) -> None:
    """Run the cluster manager until SIGTERM."""
    from utility.adapters.event_guard import EventRules
    from utility.adapters.executor import Timeouts
    from utility.adapters.tls import check_listen, split_listen
    from utility.service.desired import Settings
    from utility.service.manager import ClusterManager
    from utility.web.daemon_server import serve

    settings = Settings(prefix=prefix, address_base=address_base, placement=placement)
    timeouts = Timeouts(ready=ready_timeout, stop=stop_timeout)
    secret = os.environ.get(events_secret_env)
    tls = (Path(tls_cert), Path(tls_key)) if tls_cert and tls_key else None
    if listen is not None:  # refused here, before anything is opened
        check_listen(split_listen(listen)[0], *(tls or (None, None)))
    elif tls_cert or tls_key:
        raise click.UsageError("--tls-cert/--tls-key need --listen HOST:PORT")
    serve(
        Path(state_dir) if state_dir else default_state_dir(),
        listen,
        lambda d: ClusterManager(
            d,
            settings,
            timeouts,
            default_host,
            boot_order=boot_order,
            host_grace=host_grace,
            backup_keep=backup_keep,
        ),
        events_secret=secret.encode() if secret else None,
        poll_interval=poll_interval,
        reinitialise=reinitialise,
        tls=tls,
        event_rules=EventRules(window=event_window),
        check_interval=check_interval,
        rebalance_interval=rebalance_interval,
        backup_interval=backup_interval,
    )


@utility_group.command("unowned")
@click.option("--json", "as_json", is_flag=True)
@client_options
def unowned_command(as_json: bool, client: UtilityClient) -> None:
    """Domains on the hosts that no VAP owns (found at start-up; reported, never killed)."""

    def render(rows: list[dict[str, str]]) -> None:
        for r in rows:
            click.echo(f"{r['host']}: {r['domain']}")
        if not rows:
            click.echo("no unowned domains")

    emit(client.unowned()["unowned"], as_json, render)


def _repository_auth(user: str | None, token_env: str) -> tuple[str, str] | None:
    token = os.environ.get(token_env)
    if user is None:
        return None
    if not token:
        raise click.UsageError(f"--user {user} needs the repository token in ${token_env}")
    return user, token


repository_credentials = [
    click.option(
        "--user",
        "repo_user",
        default=None,
        help="User on the repository server (write credentials, HTTP basic).",
    ),
    click.option(
        "--token-env",
        default="COLLECTIVE_REPO_TOKEN",
        show_default=True,
        help="Environment variable holding that user's token (never an argument).",
    ),
]


def _with_repository_credentials(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(repository_credentials):
        fn = option(fn)
    return fn


@utility_group.command("subscribe")
@click.argument("url")
@click.option(
    "--events-url",
    default=None,
    metavar="URL",
    help="Where the repository server reaches this daemon's events endpoint "
    "(default: the daemon's own TCP address + /v1/events/publish).",
)
@_with_repository_credentials
@client_options
def subscribe_command(
    url: str, events_url: str | None, repo_user: str | None, token_env: str, client: UtilityClient
) -> None:
    """Register the utility with the repository at URL: its new versions are announced here.

    The daemon generates the shared HMAC secret, gives it to the server and keeps it in its
    state directory (0600); it is never printed.
    """
    result = client.subscribe(url, events_url, _repository_auth(repo_user, token_env))
    click.echo(f"subscribed to {result['repository']}: events go to {result['events_url']}")


@utility_group.command("unsubscribe")
@click.argument("url")
@_with_repository_credentials
@client_options
def unsubscribe_command(
    url: str, repo_user: str | None, token_env: str, client: UtilityClient
) -> None:
    """Stop publish events from the repository at URL and forget its secret."""
    result = client.unsubscribe(url, _repository_auth(repo_user, token_env))
    click.echo(f"unsubscribed from {result['repository']}")


@utility_group.command("subscriptions")
@click.option("--json", "as_json", is_flag=True)
@client_options
def subscriptions_command(as_json: bool, client: UtilityClient) -> None:
    """Repositories that send this utility publish events."""
    emit(
        client.subscriptions(),
        as_json,
        lambda rows: echo_lines(
            [f"{r['repository']} -> {r['events_url']}" for r in rows] or ["no subscriptions"]
        ),
    )


@utility_group.group("token")
def token_group() -> None:
    """API tokens (administrators only)."""


@token_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["user", "admin"]), default="user", show_default=True)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write into this state directory directly (bootstrap a TCP-only daemon's "
    "first administrator) instead of asking the daemon.",
)
@click.option("--json", "as_json", is_flag=True, help="Print name, role and token as JSON.")
@client_options
def token_add(
    name: str, role: str, state_dir: str | None, as_json: bool, client: UtilityClient
) -> None:
    """Create a token for NAME and print it (it is stored only as a hash)."""
    if state_dir:
        from utility.service.administration import bootstrap_token

        made = {"name": name, "role": role, "token": bootstrap_token(Path(state_dir), name, role)}
    else:
        made = client.add_token(name, role)
    emit(made, as_json, lambda m: click.echo(m["token"]))


@token_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@client_options
def token_list(as_json: bool, client: UtilityClient) -> None:
    """Every token's name, role and creation time (never the token: only its hash is kept)."""

    def render(rows: list[dict[str, Any]]) -> None:
        click.echo(f"{'NAME':24} {'ROLE':6} CREATED")
        for r in rows:
            created = r["created"]
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created)) if created else "-"
            click.echo(f"{r['name']:24} {r['role']:6} {when}")

    emit(client.tokens(), as_json, render)


@token_group.command("revoke")
@click.argument("name")
@client_options
def token_revoke(name: str, client: UtilityClient) -> None:
    """Revoke NAME's token: its next request is refused."""
    client.revoke_token(name)
    click.echo(f"revoked the token of {name}")


@utility_group.group("trust")
def trust_group() -> None:
    """Which versions the utility runs: require-signed and trusted keys (global or per URL)."""


@trust_group.command("require-signed")
@click.argument("url", required=False)
@click.option("--off", is_flag=True, help="Stop requiring signatures.")
@client_options
def trust_require(url: str | None, off: bool, client: UtilityClient) -> None:
    """Require signed versions for the repository at URL (every repository without URL)."""
    client.set_trust(url, not off)
    click.echo(
        f"{'no longer requiring' if off else 'requiring'} signed versions for "
        f"{url or 'every repository'}"
    )


@trust_group.command("add-key")
@click.argument("key_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--url", default=None, help="Trust the key only for this repository.")
@client_options
def trust_add_key(key_file: str, url: str | None, client: UtilityClient) -> None:
    """Trust an armored GPG public key or an SSH allowed_signers line (KEY_FILE)."""
    kind = client.trust_key(url, Path(key_file).read_text())["trusted"]
    click.echo(f"trusted {kind} key for {url or 'every repository'}")


@trust_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@client_options
def trust_list(as_json: bool, client: UtilityClient) -> None:
    """The trust policy."""
    emit(
        client.trust(),
        as_json,
        lambda rows: echo_lines(
            f"{r['url'] or '(global)'}: require-signed {'on' if r['require_signed'] else 'off'}, "
            f"{r['keys']} key(s)"
            for r in rows
        ),
    )


# -- administration -------------------------------------------------------------------------------


@click.group("host")
def host_group() -> None:
    """Hosts (libvirt connection URIs) the utility runs VMs on."""


@host_group.command("add")
@click.argument("name")
@click.option(
    "--uri",
    required=True,
    help="libvirt URI: qemu:///system, qemu+ssh://H/system, test:///PATH.xml",
)
@click.option("--memory", required=True, help="Memory the utility may use, e.g. 16G.")
@click.option("--max-vms", type=int, required=True, help="Most VMs at once.")
@click.option(
    "--underlay",
    metavar="IP",
    help="The host's IPv4 address other hosts reach it at: VAN segments that span hosts "
    "run VXLAN between underlay addresses (checked on the host).",
)
@client_options
def host_add(
    name: str, uri: str, memory: str, max_vms: int, underlay: str | None, client: UtilityClient
) -> None:
    """Register a host."""
    row = client.add_host(name, uri, memory, max_vms, underlay)
    via = f", underlay {row['underlay']}" if row.get("underlay") else ""
    click.echo(f"added host {row['name']} ({row['uri']}{via})")


@host_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@client_options
def host_list(as_json: bool, client: UtilityClient) -> None:
    """Hosts with capacity and use."""
    from utility.core.sizes import format_size

    def render(rows: list[dict[str, Any]]) -> None:
        click.echo(f"{'NAME':12} {'URI':40} {'MEMORY':>16} {'VMS':>8} {'UNDERLAY':15}")
        for r in rows:
            mem = f"{format_size(r['used_memory'])}/{format_size(r['memory'])}"
            vms = f"{r['vms']}/{r['max_vms']}"
            tag = " (embedded default)" if r["embedded"] else ""
            if r.get("health", "up") != "up":
                tag += f" {r['health'].upper()}"
            if r.get("drained"):
                tag += " drained"
            under = r.get("underlay") or "-"
            click.echo(f"{r['name']:12} {r['uri']:40} {mem:>16} {vms:>8} {under:15}{tag}")

    emit(client.hosts(), as_json, render)


@host_group.command("remove")
@click.argument("name")
@client_options
def host_remove(name: str, client: UtilityClient) -> None:
    """Forget a host (refused while it runs VMs)."""
    client.remove_host(name)
    click.echo(f"removed host {name}")


@host_group.command("dead")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@client_options
def host_dead(name: str, as_json: bool, client: UtilityClient) -> None:
    """Declare a host gone for good: its VMs are lost, stops waiting for it complete and
    release their addresses (recorded in each VAP's history)."""

    def render(r: dict[str, Any]) -> None:
        click.echo(f"host {name} declared dead: {len(r['dead'])} VM(s) lost")
        for path in r["stopped"]:
            click.echo(f"pending stop of {path} completed")

    emit(client.host_dead(name), as_json, render)


@click.group("vlan")
def vlan_group() -> None:
    """The VLAN pool."""


@vlan_group.command("add")
@click.argument("spec", metavar="FIRST-LAST")
@client_options
def vlan_add(spec: str, client: UtilityClient) -> None:
    """Add VLAN tags, e.g. 100-163."""
    click.echo(f"added {client.add_vlans(spec)['added']} VLAN(s)")


@click.group("publicip")
def publicip_group() -> None:
    """The public IP pool."""


@publicip_group.command("add")
@click.argument("spec", metavar="FIRST-LAST")
@client_options
def publicip_add(spec: str, client: UtilityClient) -> None:
    """Add public IPs, e.g. 192.0.2.10-192.0.2.20."""
    click.echo(f"added {client.add_public_ips(spec)['added']} public IP(s)")


@click.group("blacklist")
def blacklist_group() -> None:
    """Repository versions the utility refuses to start."""


@blacklist_group.command("add")
@click.argument("url")
@click.argument("version", metavar="VERSION|all")
@client_options
def blacklist_add(url: str, version: str, client: UtilityClient) -> None:
    """Blacklist VERSION (or all versions) of the repository at URL."""
    client.blacklist_add(url, version)
    click.echo(f"blacklisted {url} {version}")


@blacklist_group.command("remove")
@click.argument("url")
@click.argument("version", metavar="VERSION|all")
@client_options
def blacklist_remove(url: str, version: str, client: UtilityClient) -> None:
    """Remove a blacklist entry."""
    client.blacklist_remove(url, version)
    click.echo(f"removed {url} {version} from the blacklist")


@blacklist_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@client_options
def blacklist_list(as_json: bool, client: UtilityClient) -> None:
    """The blacklist."""
    emit(
        client.blacklist(),
        as_json,
        lambda rows: echo_lines(f"{r['url']} {r['version']}" for r in rows),
    )


@blacklist_group.command("violations")
@click.option("--json", "as_json", is_flag=True)
@client_options
def blacklist_violations(as_json: bool, client: UtilityClient) -> None:
    """Running appliances that use a blacklisted version (they are not stopped)."""
    emit(
        client.violations(),
        as_json,
        lambda rows: echo_lines(
            [
                f"{r['vap']} {r['component']} ({r['owner']}): {r['url']} v{r['version']}"
                for r in rows
            ]
            or ["no violations"]
        ),
    )


# -- start / stop / status ------------------------------------------------------------------------


def _secrets_for(cvl_path: Path) -> dict[str, str]:
    """Values of the VAP's required sensitive parameters that have none, through the secret cache.

    Only the parameters the CVL reports missing are asked for: one whose value is a reference to
    another (`l.rootdnpass = rootdnpass;`) follows from the one the user gives.
    """
    from utility.adapters.cvl_adapter import missing_sensitive_paths

    keys = missing_sensitive_paths(cvl_path)
    if not keys:
        return {}
    password = os.environ.get("COLLECTIVE_AGENT_PASSWORD") or click.prompt(
        "agent password", hide_input=True, err=True
    )
    from utility.client import secret_cache  # cryptography: only when a secret is needed

    cache = secret_cache.SecretCache(secret_cache.default_path(), password)
    return secret_cache.obtain(cache, cvl_path, keys, _ask)


def _ask(param: str) -> str:
    if sys.stdin.isatty():
        return str(click.prompt(f"value of sensitive parameter {param}", hide_input=True, err=True))
    line = sys.stdin.readline()
    return line.rstrip("\n")


class DiskProgress:
    """Shows disk downloads (or, with `verb="migrating"`, live migrations) on stderr while the
    daemon works: rich progress bars on a terminal, otherwise one line per quarter of each
    (logs stay short)."""

    def __init__(self, verb: str = "fetching") -> None:
        from rich.console import Console

        self.verb = verb
        self.console = Console(stderr=True)
        self.bars: Any = None
        self.tasks: dict[str, Any] = {}
        self.quarters: dict[str, int] = {}

    def __enter__(self) -> DiskProgress:
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            self.bars = Progress(
                TextColumn(f"{self.verb} {{task.description}}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=self.console,
            )
            self.bars.start()
        return self

    def __call__(self, label: str, done: int, total: int) -> None:
        if self.bars is not None:
            if label not in self.tasks:
                self.tasks[label] = self.bars.add_task(label, total=total)
            self.bars.update(self.tasks[label], completed=done, total=total)
            return
        from utility.core.sizes import format_size

        quarter = min(4, done * 4 // total) if total > 0 else 4
        if self.quarters.get(label) != quarter:
            self.quarters[label] = quarter
            self.console.print(
                f"{self.verb} {label}: {quarter * 25}% of {format_size(total)}",
                highlight=False,
                soft_wrap=True,
            )

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()


def vap_ref(arg: str) -> str:
    """The VAP a command means: NAME or OWNER/NAME as given, or for an existing .cvl file its
    default name (the file's stem; how `cui start FILE.cvl` names it)."""
    from utility.core.bundle import default_name

    path = Path(arg)
    if arg.endswith(".cvl") and path.is_file():
        return default_name(path.name)
    return arg


def _bundle(path: Path, root: str | None) -> dict[str, Any]:
    """The CVL bundle of `path` in its wire form (`utility.adapters.bundles.read_bundle`)."""
    from utility.adapters.bundles import read_bundle

    notes: list[str] = []
    bundle = read_bundle(path, Path(root) if root else None, notes)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    return bundle.to_wire()


ROOT_HELP = (
    "Bundle imports under this directory (default: the CVL file's directory); file: imports "
    "outside it are not sent."
)


@click.command("start")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", default=None, help="The VAP's name (default: the file's stem).")
@click.option("--root", default=None, type=click.Path(file_okay=False), help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (and no progress).")
@click.option(
    "--restart",
    type=click.Choice(["always", "never"]),
    default="always",
    show_default=True,
    help="Restart a VM that stopped on its own (with backoff), or leave it crashed.",
)
@client_options
def start_command(
    file: str,
    name: str | None,
    root: str | None,
    as_json: bool,
    restart: str,
    client: UtilityClient,
) -> None:
    """Start the appliance FILE.cvl describes: the file and the file: imports it reaches are
    sent to the utility, which keeps them (disk downloads shown with progress bars)."""
    path = Path(file).resolve()
    began = time.monotonic()
    bundle = _bundle(path, root)
    secrets = _secrets_for(path)
    if as_json:
        result = client.start(bundle, secrets, restart=restart, name=name)
    else:
        with DiskProgress() as progress:
            result = client.start(bundle, secrets, progress, restart, name)
    for note in result.get("notes", []):
        click.echo(note, err=True)

    def render(r: dict[str, Any]) -> None:
        click.echo(
            f"started {r['name']} in {time.monotonic() - began:.2f} s "
            f"(boot order: {', '.join(r['boot_order'])})"
        )
        _render_status([r])

    emit(result, as_json, render)


@click.command("stop")
@click.argument("vap", metavar="NAME")
@click.argument("component", required=False)
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds for a clean shutdown before forcing (default: the daemon's, 180).",
)
@click.option("--json", "as_json", is_flag=True)
@client_options
def stop_command(
    vap: str, component: str | None, timeout: float | None, as_json: bool, client: UtilityClient
) -> None:
    """Stop the appliance NAME (or only COMPONENT, a dotted path such as g.f)."""
    result = client.stop(vap_ref(vap), component, timeout)
    for warning in result["warnings"]:
        click.echo(warning, err=True)
    for problem in result.get("problems", []):
        click.echo(f"problem: {problem}", err=True)
    emit(result, as_json, lambda r: click.echo(f"stopped {', '.join(r['stopped'])}"))


@click.command("update")
@click.argument("vap", metavar="NAME")
@click.argument("rest", nargs=-1, metavar="[FILE.cvl] [COMPONENT]")
@click.option("--root", default=None, type=click.Path(file_okay=False), help=ROOT_HELP)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--json", "as_json", is_flag=True)
@client_options
def update_command(
    vap: str,
    rest: tuple[str, ...],
    root: str | None,
    dry_run: bool,
    as_json: bool,
    client: UtilityClient,
) -> None:
    """Update the running appliance NAME: to what FILE.cvl now says (sent as a new bundle), or
    re-evaluated from the bundle it runs (new repository versions); only COMPONENT if given.
    NAME may itself be the .cvl file (its stem is the name, and the file is sent).

    The plan is printed first: + start, - remove (data to the attic), ~ new version,
    ↻ resend changed parameters (sensitive values never shown).
    """
    args = list(rest)
    file = args.pop(0) if args and args[0].endswith(".cvl") else None
    if file is None and vap.endswith(".cvl") and Path(vap).is_file():
        file = vap
    if len(args) > 1:
        raise click.UsageError("expected NAME [FILE.cvl] [COMPONENT]")
    component = args[0] if args else None
    path = Path(file).resolve() if file else None
    bundle = _bundle(path, root) if path else None
    secrets = _secrets_for(path) if path else {}
    name = vap_ref(vap)
    if as_json:
        result = client.update(name, component, dry_run, secrets, bundle=bundle)
    else:
        with DiskProgress() as progress:
            result = client.update(name, component, dry_run, secrets, progress, bundle)

    def render(r: dict[str, Any]) -> None:
        if not r["lines"]:
            click.echo("nothing to do: the appliance already matches its CVL")
            return
        click.echo("plan:" if r["applied"] else "plan (dry run, nothing changed):")
        for line in r["lines"]:
            click.echo(f"  {line}")
        if r["applied"]:
            click.echo("update failed: " + r["error"] if r["error"] else "applied")

    emit(result, as_json, render)
    if result.get("error"):
        raise SystemExit(1)


@click.command("show")
@click.argument("vap", metavar="NAME")
@click.option("--json", "as_json", is_flag=True)
@client_options
def show_command(vap: str, as_json: bool, client: UtilityClient) -> None:
    """The CVL bundle the appliance NAME runs: its files, their digests, and its CVL text."""

    def render(r: dict[str, Any]) -> None:
        versions = r["versions"]
        click.echo(
            f"{r['name']} (owner {r['owner']}, {r['status']}): bundle {r['digest'][:16]} "
            f"version {versions[-1]['seq'] if versions else '?'} of {len(versions)}, "
            f"from {r['root_dir']}/{r['root']}"
        )
        for path, info in r["files"].items():
            click.echo(f"  {info['sha256'][:16]} {info['size']:>10}  {path}")
        for path, text in r["texts"].items():
            click.echo(f"--- {path}")
            click.echo(text.rstrip("\n"))

    emit(client.show(vap_ref(vap)), as_json, render)


@click.command("history")
@click.argument("vap", metavar="[NAME]", required=False)
@click.option("--json", "as_json", is_flag=True)
@client_options
def history_command(vap: str | None, as_json: bool, client: UtilityClient) -> None:
    """Every update: when, trigger (push, poll, user), from and to versions, result."""

    def render(rows: list[dict[str, Any]]) -> None:
        for h in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(h["at"])))
            moves = (
                ", ".join(
                    f"{p or '(root)'} {a or '-'}->{b or '-'}" for p, (a, b) in h["versions"].items()
                )
                or "no version change"
            )
            click.echo(f"{when} {h['trigger']:5} {h['name']}: {moves}: {h['result']}")
            for line in h["actions"]:
                click.echo(f"    {line}")

    emit(client.history(vap_ref(vap) if vap else None), as_json, render)


def _render_status(vaps: list[dict[str, Any]]) -> None:
    for vap in vaps:
        click.echo(
            f"{vap['name']}  [{vap['status']}] owner {vap['owner']}"
            + (f"  restart {vap['restart']}" if vap.get("restart") else "")
            + (f"  error: {vap['error']}" if vap.get("error") else "")
        )
        click.echo(
            f"  {'PATH':10} {'TYPE':12} {'VERSION':>8} {'HOST':10} {'STATE':8} "
            f"{'UPTIME':>8}  INTERFACES"
        )
        for c in vap["components"]:
            ifaces = ", ".join(f"{i['name']} {i['ip']} {i['mac']}" for i in c["interfaces"])
            up = f"{c['uptime']:.0f}s" if c.get("uptime") is not None else "-"
            state = c["state"] + (f" ({c['restarts']} restarts)" if c.get("restarts") else "")
            if c.get("host_health"):
                state += f" (host {c['host_health']})"
            click.echo(
                f"  {c['path']:10} {c.get('type', '?'):12} {str(c.get('version')):>8} "
                f"{c['host']:10} {state:8} {up:>8}  {ifaces}"
            )
            if c.get("restored"):
                click.echo(f"    restored after its host failed; data: {c['restored']['source']}")
            if "backups" in c:
                click.echo(f"    {_backups_line(c['backups'], time.time())}")


def _backups_line(latest: dict[str, float], now: float) -> str:
    """`latest backup: vdb 2026-12-02 01:55:00 UTC (312 s ago)`, or that there is none."""
    if not latest:
        return "latest backup: none yet"
    parts = [
        f"{target} {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(taken))} "
        f"({max(0.0, now - taken):.0f} s ago)"
        for target, taken in sorted(latest.items())
    ]
    return "latest backup: " + ", ".join(parts)


@click.command("status")
@click.argument("vap", metavar="[NAME]", required=False)
@click.option("--json", "as_json", is_flag=True)
@client_options
def status_command(vap: str | None, as_json: bool, client: UtilityClient) -> None:
    """Status of your appliances (all of them for administrators), or of NAME."""
    result = client.status(vap_ref(vap) if vap else None)
    emit(result, as_json, _render_status)


# -- agent ----------------------------------------------------------------------------------------


@click.group("agent")
def agent_group() -> None:
    """The user agent's encrypted cache of sensitive parameter values."""


def _open_cache() -> secret_cache.SecretCache:
    from utility.client import secret_cache

    password = os.environ.get("COLLECTIVE_AGENT_PASSWORD") or click.prompt(
        "agent password", hide_input=True, err=True
    )
    return secret_cache.SecretCache(secret_cache.default_path(), password)


@agent_group.command("set")
@click.argument("key")
@click.option("--cvl", "cvl_file", required=True, type=click.Path(dir_okay=False))
def agent_set(key: str, cvl_file: str) -> None:
    """Cache the value of sensitive parameter KEY (e.g. l.rootpw) of FILE.cvl."""
    from utility.client import secret_cache

    cache = _open_cache()
    cache.set(secret_cache.cache_key(Path(cvl_file), key), _ask(key))
    cache.save()
    click.echo(f"cached {key}")


@agent_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print [{cvl, key}] as JSON.")
def agent_list(as_json: bool) -> None:
    """The cached keys (never the values)."""
    keys = list(_open_cache().keys())
    if as_json:
        rows = [dict(zip(("cvl", "key"), k.rsplit("#", 1), strict=True)) for k in keys]
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    for key in keys:
        click.echo(key)


@agent_group.command("forget")
@click.argument("key")
@click.option("--cvl", "cvl_file", required=True, type=click.Path(dir_okay=False))
def agent_forget(key: str, cvl_file: str) -> None:
    """Drop a cached value."""
    from utility.client import secret_cache

    cache = _open_cache()
    if cache.forget(secret_cache.cache_key(Path(cvl_file), key)):
        cache.save()
        click.echo(f"forgot {key}")
    else:
        click.echo(f"{key} was not cached")


def register(cli: click.Group) -> None:
    """Attach the utility's commands to `cui`."""
    for command in (
        utility_group,
        host_group,
        vlan_group,
        publicip_group,
        blacklist_group,
        start_command,
        stop_command,
        update_command,
        status_command,
        history_command,
        show_command,
        agent_group,
    ):
        cli.add_command(command)
