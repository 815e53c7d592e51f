"""`cui check` and `cui eval`: the CVL commands (parse, import, evaluate; render the result).

cui check FILE.cvl [--set PATH=VALUE ...] [--assign PATH=VALUE ...] [--json]   every error
cui eval  FILE.cvl [--set PATH=VALUE ...] [--assign PATH=VALUE ...] [--json]  the parameters

`--set` supplies user values; `--assign` previews the values the utility assigns (an interface's
mac, ip, subnet, netmask), which `--set` cannot touch. Sensitive values (declared, or computed
from one) are never printed: the table and `--json` show them masked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NoReturn

import click

import cvl
from cvl.errors import CvlOverrideError
from cvl.model import MASK
from cvl.resolver import DefaultResolver, Resolver

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


def make_resolver() -> Resolver:
    """The repository client's resolver (reads repositories, verifies) if installed, else ours."""
    try:
        from reposerver.client import make_resolver as repository_resolver
    except ImportError as exc:  # not there yet (or without the hook): fall back, hide no bugs
        if exc.name not in ("reposerver", "reposerver.client"):
            raise
        return DefaultResolver()
    return repository_resolver()  # type: ignore[no-any-return]


def parse_overrides(items: Sequence[str], option: str = "--set") -> dict[str, list[str]]:
    """`--set PATH=VALUE` options to overrides; repeating a PATH gives a list value in order.

    A malformed item is named by its path only: its value may be a secret.
    """
    overrides: dict[str, list[str]] = {}
    for item in items:
        path, sep, value = item.partition("=")
        if not sep or not path.strip():
            shown = repr(path) if not sep else "with an empty PATH"
            raise CvlOverrideError(
                f"{option} {shown}: expected PATH=VALUE, e.g. d.domain=acme.org", file=option
            )
        overrides.setdefault(path.strip(), []).append(value)
    return overrides


def _analyse(file: str, sets: Sequence[str], assigns: Sequence[str]) -> cvl.Analysis:
    return cvl.analyse_file(
        file,
        resolver=make_resolver(),
        overrides=parse_overrides(sets),
        assigned=parse_overrides(assigns, "--assign"),
    )


def _warn(analysis: cvl.Analysis) -> None:
    for warning in analysis.warnings:
        click.echo(f"warning: {warning}", err=True)


def _fail(file: str, errors: Sequence[cvl.CvlError]) -> NoReturn:
    """Print every error and a count; exit 3 if an import server was unreachable, else 1."""
    for error in errors:
        click.echo(error.render(), err=True)
    count = len(errors)
    click.echo(f"{file}: {count} error{'s' if count != 1 else ''}", err=True)
    unreachable = any(getattr(error, "unreachable", False) for error in errors)
    raise click.exceptions.Exit(EXIT_UNREACHABLE if unreachable else EXIT_FAILED)


def _from_agent(errors: Sequence[cvl.CvlError]) -> list[str]:
    """Paths of required sensitive parameters, when they are all that is missing."""
    from cvl.errors import CvlMissingError

    paths = [e.path for e in errors if isinstance(e, CvlMissingError) and e.sensitive and e.path]
    return paths if len(paths) == len(errors) else []


_SET_HELP = "Supply or override a parameter, e.g. d.domain=acme.org (repeatable)."
_ASSIGN_HELP = (
    "Preview a value the utility assigns (an interface's mac, ip, subnet, netmask), "
    "e.g. d.ethernet0.ip=10.0.1.2 (repeatable)."
)


@click.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE", help=_SET_HELP)
@click.option("--assign", "assigns", multiple=True, metavar="PATH=VALUE", help=_ASSIGN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (same exit codes).")
def check_command(
    file: str, sets: tuple[str, ...], assigns: tuple[str, ...], as_json: bool
) -> None:
    """Parse, import and evaluate FILE; print every error (exit 1) or a one-line summary."""
    analysis = _analyse(file, sets, assigns)
    from_agent = _from_agent(analysis.errors)
    if from_agent:
        # Required sensitive values never live in CVL files; check the rest as if supplied.
        overrides = {**parse_overrides(sets), **dict.fromkeys(from_agent, ["<from agent>"])}
        analysis = cvl.analyse_file(
            file,
            resolver=make_resolver(),
            overrides=overrides,
            assigned=parse_overrides(assigns, "--assign"),
        )
    if as_json:
        _check_json(file, analysis, from_agent)
    _warn(analysis)
    if analysis.errors:
        _fail(file, analysis.errors)
    model = analysis.model
    assert model is not None
    for path in from_agent:
        click.echo(
            f"note: {path} is required and sensitive: the user agent supplies it at start "
            f"(cui agent set {path})",
            err=True,
        )
    summary = _summary(model)
    vms, vans, imports, pending = (summary[k] for k in ("vms", "vans", "imports", "pending"))
    click.echo(
        f"{file}: ok: {model.appliance} ({model.root.kind}), {vms} VM{'s' * (vms != 1)}, "
        f"{vans} VAN{'s' * (vans != 1)}, {imports} import{'s' * (imports != 1)}, "
        f"{pending} pending parameter{'s' * (pending != 1)}"
    )


def _summary(model: cvl.Model) -> dict[str, int]:
    return {
        "vms": len(model.vms()),
        "vans": len(model.vans()),
        "imports": len(model.imports),
        "pending": len(model.pending),
    }


def _check_json(file: str, analysis: cvl.Analysis, from_agent: Sequence[str]) -> NoReturn:
    """`cui check --json`: one object on stdout, then the same exit code as without --json."""
    errors = [
        {
            "file": e.file,
            "line": e.line,
            "column": e.col,
            "message": e.message,
            "kind": type(e).__name__,
            "path": getattr(e, "path", None),
            "imported_from": [str(site) for site in e.chain],
        }
        for e in analysis.errors
    ]
    model = analysis.model
    result = {
        "file": file,
        "ok": not errors,
        "appliance": model.appliance if model is not None and not errors else None,
        "errors": errors,
        "warnings": [str(w) for w in analysis.warnings],
        "from_agent": list(from_agent),
        "summary": _summary(model) if model is not None and not errors else None,
    }
    click.echo(json.dumps(result, indent=2))
    unreachable = any(getattr(error, "unreachable", False) for error in analysis.errors)
    code = (EXIT_UNREACHABLE if unreachable else EXIT_FAILED) if errors else 0
    raise click.exceptions.Exit(code)


@click.command("eval")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE", help=_SET_HELP)
@click.option("--assign", "assigns", multiple=True, metavar="PATH=VALUE", help=_ASSIGN_HELP)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the README's JSON contract (sensitive masked)."
)
def eval_command(file: str, sets: tuple[str, ...], assigns: tuple[str, ...], as_json: bool) -> None:
    """Evaluate FILE and print every component's parameters (a table, or --json).

    Sensitive values, declared or computed from one, are masked in both forms.
    """
    analysis = _analyse(file, sets, assigns)
    _warn(analysis)
    if analysis.errors or analysis.model is None:
        _fail(file, analysis.errors or [cvl.CvlError("evaluation produced no model", file=file)])
    if as_json:
        click.echo(json.dumps(analysis.model.to_json(), indent=2))
    else:
        _print_table(analysis.model)


def _print_table(model: cvl.Model) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model.appliance} ({model.file})")
    for column in ("component", "type", "parameter", "value", "notes"):
        table.add_column(column, overflow="fold")
    for component in model.walk():
        where = component.path or "(root)"
        label = f"{component.type} [{component.kind}]"
        names = list(component.declared)
        for index, name in enumerate(names):
            declared = component.declared[name]
            value = component.param(name)
            sensitive = name in component.sensitive_params
            if name in component.pending:
                shown = "(pending)"
            elif value is None:
                shown = "-"
            elif sensitive:
                shown = MASK
            else:
                shown = "\n".join(value)
            derived = sensitive and not declared.sensitive
            notes = ", ".join(
                flag
                for flag, on in (
                    ("required", declared.required),
                    ("sensitive", declared.sensitive),
                    ("sensitive (derived)", derived),
                )
                if on
            )
            table.add_row(
                where if index == 0 else "", label if index == 0 else "", name, shown, notes
            )
        table.add_section()
    Console(soft_wrap=False).print(table)
    if model.pending:
        click.echo(f"{len(model.pending)} pending: " + ", ".join(model.pending))


def register(cli: click.Group) -> None:
    """Attach `check` and `eval` to the `cui` group."""
    cli.add_command(check_command)
    cli.add_command(eval_command)
