"""Entry point of the `cui` command: the click group and the one place errors become exit codes.

Exit codes: 0 success, 1 the request failed (bad CVL, refused push, refused start, ...),
2 usage error (click), 3 could not reach a server or host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


AREAS = ("lang", "repo", "utility_cmds", "move_cmds")
"""The modules of `cui` that each register their commands (`register(cli)`)."""

HOME = {
    **dict.fromkeys(("check", "eval"), "lang"),
    **dict.fromkeys(
        ("create", "delta", "fetch", "publish", "serve", "subscribe", "token", "trust", "versions"),
        "repo",
    ),
    **dict.fromkeys(
        (
            "agent", "blacklist", "history", "host", "publicip", "start", "status", "stop",
            "update", "utility", "vlan",
        ),
        "utility_cmds",
    ),
    **dict.fromkeys(("move", "rebalance"), "move_cmds"),
}  # fmt: skip
"""Where each top-level command lives, so `cui status` imports the client and not the CVL
language or the repository server; a command missing here is still found (every area loads)."""
ALSO = {"host": ("move_cmds",)}
"""Areas that add subcommands to another area's group (`cui host drain|undrain`)."""


class CuiGroup(click.Group):
    """A click group that maps every project error to a message and an exit code, and loads
    each area's commands only when one of them is asked for (start-up time of `cui status`)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None:
            home = HOME.get(cmd_name)
            _register(*((home, *ALSO.get(cmd_name, ())) if home else AREAS))
            found = super().get_command(ctx, cmd_name)
            if found is None and home:
                _register(*AREAS)
                found = super().get_command(ctx, cmd_name)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register(*AREAS)
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - this is the one place errors are mapped
            code, message = describe_error(exc)
            if message:
                click.echo(message, err=True)
            ctx.exit(code)


def describe_error(exc: BaseException) -> tuple[int, str]:
    """Return (exit code, message) for an exception raised by any layer below the CLI."""
    from cvl.errors import CvlError

    if isinstance(exc, CvlError):
        return EXIT_FAILED, exc.render()
    for module, attr in (
        ("reposerver.errors", "RepositoryError"),
        ("utility.errors", "UtilityError"),
    ):
        try:
            cls = getattr(__import__(module, fromlist=[attr]), attr)
        except (ImportError, AttributeError):
            continue
        if isinstance(exc, cls):
            unreachable = getattr(exc, "unreachable", False)
            return (EXIT_UNREACHABLE if unreachable else EXIT_FAILED), f"error: {exc}"
    if isinstance(exc, ModuleNotFoundError) and exc.name == "libvirt":
        return EXIT_FAILED, (
            "error: this command runs the Collective Utility, which needs libvirt-python: "
            "pip install 'collective[utility]'"
        )
    if isinstance(exc, ConnectionError | TimeoutError):
        return EXIT_UNREACHABLE, f"error: cannot connect: {exc}"
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return EXIT_FAILED, f"error: {exc}"
    raise exc


@click.group(cls=CuiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="collective")
def cli() -> None:
    """Collective: publish, run and automatically update virtual appliances."""


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    bash: `eval "$(cui completion bash)"` in ~/.bashrc; zsh: the same in ~/.zshrc;
    fish: `cui completion fish > ~/.config/fish/completions/cui.fish`.
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.UsageError(f"no completion for {shell}")
    click.echo(cls(cli, {}, "cui", "_CUI_COMPLETE").source())


_loaded: set[str] = set()


def _register(*names: str) -> None:
    """Attach the commands of the areas `names` (once each); an area that fails to import is a
    bug, not hidden."""
    for name in names:
        if name in _loaded:
            continue
        _loaded.add(name)
        try:
            module = __import__(f"cui.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"cui.{name}":
                raise
            continue
        register: Callable[[click.Group], None] = module.register
        register(cli)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cui")


if __name__ == "__main__":  # pragma: no cover
    main()
