"""The utility's import direction, read from the source with `ast` (README, Architecture).

`utility/core` and `common` (what the repository and the utility share) are pure: they import no
module that does I/O and none of the outer layers.
`utility/adapters` never import services or the web side; services never import the web side;
nothing but `cui` (and the tests) imports the client side.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Modules whose import means I/O (or a web framework): forbidden in the pure core.
IO_MODULES = {
    "libvirt",
    "sqlite3",
    "subprocess",
    "requests",
    "flask",
    "werkzeug",
    "socket",
    "http",
    "urllib.request",
    "shutil",
    "tempfile",
    "threading",
    "os",
    "reposerver",
    "dulwich",
    "cvl",
}
OUTER_LAYERS = {
    "core": {"utility.adapters", "utility.service", "utility.web", "utility.client"},
    "adapters": {"utility.service", "utility.web", "utility.client"},
    "service": {"utility.web", "utility.client"},
    "web": {"utility.client"},
}


def imports_of(path: Path) -> set[str]:
    """Every module name `path` imports (absolute, top-level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def offending(imported: set[str], forbidden: set[str]) -> set[str]:
    """Imports equal to a forbidden name or inside a forbidden package."""
    return {
        name for name in imported for bad in forbidden if name == bad or name.startswith(bad + ".")
    }


def layer_files(layer: str) -> list[Path]:
    return sorted((ROOT / "utility" / layer).glob("*.py"))


@pytest.mark.parametrize("path", layer_files("core"), ids=lambda p: p.name)
def test_core_imports_nothing_that_does_io(path: Path) -> None:
    assert not offending(imports_of(path), IO_MODULES | OUTER_LAYERS["core"])


@pytest.mark.parametrize("path", sorted((ROOT / "common").glob("*.py")), ids=lambda p: p.name)
def test_common_imports_neither_io_nor_either_side(path: Path) -> None:
    assert not offending(imports_of(path), IO_MODULES | {"utility", "reposerver"})


@pytest.mark.parametrize("layer", sorted(OUTER_LAYERS))
def test_layers_import_only_inwards(layer: str) -> None:
    bad = {p.name: offending(imports_of(p), OUTER_LAYERS[layer]) for p in layer_files(layer)}
    assert {name: found for name, found in bad.items() if found} == {}


def test_client_side_is_used_only_by_cui() -> None:
    users = [
        p.relative_to(ROOT)
        for top in ("utility", "reposerver", "cvl", "hooks")
        for p in (ROOT / top).rglob("*.py")
        if "client" not in p.parts and offending(imports_of(p), {"utility.client"})
    ]
    assert users == []


def test_the_check_catches_an_io_import(tmp_path: Path) -> None:
    """The checker itself can fail: a core module importing sqlite3 inside a function."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import sqlite3\n    from utility.adapters.store import Store\n")
    assert offending(imports_of(bad), IO_MODULES | OUTER_LAYERS["core"]) == {
        "sqlite3",
        "utility.adapters.store",
        "utility.adapters.store.Store",
    }
