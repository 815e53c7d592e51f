"""The one place a version's CVL file is checked and read for what the repository needs.

Publishing and every push call `describe_appliance`: the CVL must evaluate (imports resolved
through the resolver handed in), and its locally defined VM appliances name the domain XML
files (`vm`) and the data disks (`datadisks`, map strings like `device=vdb&size=100mb`) that
decide which disks are program disks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reposerver.errors import InvalidAppliance


@dataclass(frozen=True)
class ApplianceSpec:
    """What a repository needs to know about an appliance's CVL file."""

    appliance: str
    vm_files: tuple[str, ...]
    data_devices: frozenset[str]


def render_error(error: Any, filename: str, quote_imports: bool) -> str:
    """One CVL error for a refusal message; without `quote_imports`, an error located in an
    imported file says only where it is, never its text (that text was fetched, not pushed)."""
    if quote_imports or error.file == filename:
        return str(error.render())
    where = f"{error.file}:{error.line}" if error.line > 0 else str(error.file)
    lines = [f"{where}: error in an imported file (its content is not shown)"]
    lines.extend(f"  imported from {site}" for site in reversed(error.chain))
    return "\n".join(lines)


def describe_appliance(
    text: str,
    filename: str,
    resolver: Any = None,
    base_dir: Path | None = None,
    quote_imports: bool = True,
) -> ApplianceSpec:
    """Evaluate CVL `text` and return its VM files and data-disk devices.

    The server passes `quote_imports=False`: its refusals must never repeat fetched content.

    Raises:
        InvalidAppliance: the CVL does not check; the message holds every error, rendered.
    """
    import cvl
    from cvl.errors import CvlError, CvlMissingError
    from cvl.maps import decode

    if resolver is None:
        from reposerver.client import make_resolver

        resolver = make_resolver()
    analysis = cvl.analyse_text(text, filename, resolver=resolver, base_dir=base_dir)
    placeholders = analysis.missing_placeholders("placeholder")
    if placeholders is not None:
        analysis = cvl.analyse_text(
            text, filename, resolver=resolver, overrides=placeholders, base_dir=base_dir
        )
    if analysis.model is None:
        errors = [
            e for e in analysis.errors if not isinstance(e, CvlMissingError)
        ] or analysis.errors
        rendered = (
            "\n".join(render_error(e, filename, quote_imports) for e in errors)
            or "evaluation produced no model"
        )
        raise InvalidAppliance(f"{filename} does not check:\n{rendered}")
    model = analysis.model
    data = model.to_json()
    vm_files: list[str] = []
    devices: set[str] = set()
    for component in data["components"].values():
        if component.get("kind") != "vm" or component.get("origin") is not None:
            continue
        params = component.get("params", {})
        for vm in params.get("vm", []):
            if vm not in vm_files:
                vm_files.append(vm)
        for value in params.get("datadisks", []):
            try:
                pairs = decode(value)
            except CvlError as exc:
                raise InvalidAppliance(f"{filename}: datadisks value {value!r}: {exc}") from None
            devices.update(v for k, v in pairs if k == "device")
    return ApplianceSpec(str(data.get("appliance", "")), tuple(vm_files), frozenset(devices))
