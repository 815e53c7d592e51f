"""Moving VMs between hosts: drain, undrain, move, rebalance (README "Moves and host failures").

cui host drain NAME | cui host undrain NAME        close a host and move its VMs off / reopen
cui move NAME COMPONENT --to HOST                   live-migrate one VM
cui rebalance [--dry-run] [--json]                  even out memory use across hosts
"""

from __future__ import annotations

from typing import Any

import click

from cui.utility_cmds import DiskProgress, client_options, emit, host_group
from utility.client.daemon_client import UtilityClient


def _moved_line(m: dict[str, Any]) -> str:
    pause = f", downtime {m['downtime_ms']} ms" if m.get("downtime_ms") is not None else ""
    copied = m.get("bytes_copied")
    size = f", {copied / 2**20:.1f} MiB copied" if copied is not None else ""
    if copied is not None and m.get("disk_bytes") is not None:
        size += f" ({m['disk_bytes'] / 2**20:.1f} MiB of disks)"
    return (
        f"moved {m['vap']}:{m['path']} {m['from']} → {m['to']} "
        f"({m['mode']}, {m['seconds']:.1f} s{pause}{size})"
    )


@host_group.command("drain")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@client_options
def host_drain(name: str, as_json: bool, client: UtilityClient) -> None:
    """Take no new VMs on host NAME and live-migrate every VM off it (a VM whose migration
    fails keeps running there and is listed)."""

    def render(r: dict[str, Any]) -> None:
        click.echo(f"host {name} drained: takes no new VMs")
        for m in r["moved"]:
            click.echo(_moved_line(m))
        for line in r["rehomed"]:
            click.echo(f"re-homed (crashed, boots there) {line}")
        for line in r["failed"]:
            click.echo(f"not moved: {line}", err=True)

    if as_json:
        result = client.drain(name)
    else:
        with DiskProgress("migrating") as progress:
            result = client.drain(name, progress)
    emit(result, as_json, render)
    if result["failed"]:
        raise SystemExit(1)


@host_group.command("undrain")
@click.argument("name")
@client_options
def host_undrain(name: str, client: UtilityClient) -> None:
    """Let host NAME take new VMs again."""
    client.undrain(name)
    click.echo(f"host {name} takes new VMs again")


@click.command("move")
@click.argument("vap")
@click.argument("component")
@click.option("--to", "host", required=True, help="The host to migrate the VM to.")
@click.option("--json", "as_json", is_flag=True)
@client_options
def move_command(vap: str, component: str, host: str, as_json: bool, client: UtilityClient) -> None:
    """Live-migrate COMPONENT of the running VAP (NAME, OWNER/NAME, or a .cvl file meaning its
    stem) to HOST (same MACs and addresses; if the migration fails the VM keeps running where
    it was)."""
    from cui.utility_cmds import vap_ref

    if as_json:
        result = client.move(vap_ref(vap), component, host)
    else:
        with DiskProgress("migrating") as progress:
            result = client.move(vap_ref(vap), component, host, progress)
    emit(result, as_json, lambda m: click.echo(_moved_line(m)))


@click.command("rebalance")
@click.option("--dry-run", is_flag=True, help="Print the plan; move nothing.")
@click.option("--json", "as_json", is_flag=True)
@client_options
def rebalance_command(dry_run: bool, as_json: bool, client: UtilityClient) -> None:
    """Even out memory use across hosts with live migrations (spread policy; pack keeps hosts
    uneven on purpose). The plan is printed as → VAP:COMPONENT FROM → TO (memory), with each
    migration's figures; while they run, their progress is shown on stderr."""
    if as_json or dry_run:
        result = client.rebalance(dry_run)
    else:
        with DiskProgress("migrating") as progress:
            result = client.rebalance(dry_run, progress)

    def render(r: dict[str, Any]) -> None:
        if not r["lines"]:
            click.echo("nothing to do: memory use is as even as moves can make it")
            return
        click.echo("plan:" if r["applied"] else "plan (dry run, nothing changed):")
        for line in r["lines"]:
            click.echo(f"  {line}")
        for m in r["moved"]:
            click.echo(_moved_line(m))
        for line in r["failed"]:
            click.echo(f"not moved: {line}", err=True)

    emit(result, as_json, render)
    if result["failed"]:
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    """Attach `move` and `rebalance` (drain/undrain hang off `cui host`)."""
    cli.add_command(move_command)
    cli.add_command(rebalance_command)
