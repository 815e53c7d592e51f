"""Parse a CVL file and, through the resolver, everything it imports; build each file's names.

A `Module` is one parsed file with its namespace: the prelude's objects (Figure 1), then its
imports, then its own objects. Imported files are loaded once per (url, cvl, resolved version),
import cycles are reported with their chain, and errors are collected (not raised) so that
`check` can report all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from cvl.diagnostics import Diagnostics
from cvl.errors import CvlDeclarationError, CvlError, CvlImportError, CvlVersionError, ImportSite
from cvl.model import ImportRecord, Origin
from cvl.resolver import UNVERSIONED, Resolver, canonical_url, file_url_path
from cvl.syntax import Assign, Import, MapLit, Node, ObjDecl, Program, Str, parse

LANGUAGE_VERSION = "0.8"
IMPORT_KEYS = ("url", "cvl", "version")


@dataclass(eq=False)
class TypeDef:
    """An object declaration together with the file (module) it was declared in."""

    name: str
    decl: ObjDecl
    module: Module


@dataclass(eq=False)
class Module:
    """One parsed CVL file and the names visible in it."""

    program: Program
    origin: Origin | None
    base_dir: str | None
    chain: tuple[ImportSite, ...]
    objects: dict[str, TypeDef] = field(default_factory=dict)
    namespace: dict[str, TypeDef] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)

    @property
    def file(self) -> str:
        return self.program.file

    def error(self, cls: type[CvlError], message: str, node: Node | None) -> CvlError:
        """An error of class `cls` positioned at `node` in this file, with the import chain."""
        line, col = (node.line, node.col) if node is not None else (0, 0)
        return cls(
            message,
            file=self.file,
            line=line,
            col=col,
            source_line=self.program.source_line(line),
            chain=self.chain,
        )


@cache
def _prelude_program() -> Program:
    text = resources.files("cvl").joinpath("prelude.cvl").read_text(encoding="utf-8")
    return parse(text, "<prelude>")


def prelude_module() -> Module:
    """A fresh module holding Figure 1's objects (Interface, Appliance, VMAppliance, ...)."""
    module = Module(program=_prelude_program(), origin=None, base_dir=None, chain=())
    for decl in module.program.objects:
        module.objects[decl.name.text] = TypeDef(decl.name.text, decl, module)
    module.namespace = dict(module.objects)
    return module


class Loader:
    """Loads a root file and its imports, collecting every error into `diagnostics`."""

    def __init__(self, resolver: Resolver, diagnostics: Diagnostics) -> None:
        self.resolver = resolver
        self.diagnostics = diagnostics
        self.prelude = prelude_module()
        self.imports: list[ImportRecord] = []
        self.warnings: list[str] = []
        self._modules: dict[tuple[str, str, str], Module] = {}
        self._fetched: dict[tuple[str, str, str | None], tuple[str, str]] = {}
        self._loading: list[tuple[str, str]] = []

    def load_root(self, text: str, file: str, base_dir: str | None) -> Module | None:
        """Parse and link the user's file; None if it does not even parse."""
        return self._load(text, file, origin=None, base_dir=base_dir, chain=())

    def _load(
        self,
        text: str,
        file: str,
        origin: Origin | None,
        base_dir: str | None,
        chain: tuple[ImportSite, ...],
    ) -> Module | None:
        try:
            program = parse(text, file)
        except CvlError as exc:
            self.diagnostics.add(exc.located(exc.file, exc.line, exc.col, exc.source_line, chain))
            return None
        module = Module(program=program, origin=origin, base_dir=base_dir, chain=chain)
        self._check_top_level(module)
        for decl in program.objects:
            name = decl.name.text
            if name in module.objects:
                first = module.objects[name].decl.name
                self.diagnostics.add(
                    module.error(
                        CvlDeclarationError,
                        f"object {name} is declared twice (first at line {first.line})",
                        decl.name,
                    )
                )
                continue
            module.objects[name] = TypeDef(name, decl, module)
        module.namespace = dict(self.prelude.objects)
        for stmt in program.imports:
            self._import(module, stmt)
        for name, typedef in module.objects.items():
            if name in module.namespace and module.namespace[name].module is not self.prelude:
                self.diagnostics.add(
                    module.error(
                        CvlDeclarationError,
                        f"object {name} has the same name as an import in this file",
                        typedef.decl.name,
                    )
                )
            module.namespace[name] = typedef
        return module

    def _check_top_level(self, module: Module) -> None:
        """`CVL = "0.8";` is the only assignment allowed outside an object."""
        for stmt in module.program.stmts:
            if not isinstance(stmt, Assign):
                continue
            if stmt.target.parts != ("CVL",):
                self.diagnostics.add(
                    module.error(
                        CvlDeclarationError,
                        f"assignment to {stmt.target.dotted} outside an object; only "
                        f'CVL = "{LANGUAGE_VERSION}"; may appear at the top level',
                        stmt,
                    )
                )
                continue
            values = stmt.values
            if len(values) != 1 or not isinstance(values[0], Str):
                self.diagnostics.add(
                    module.error(
                        CvlVersionError,
                        "the language version must be one quoted string: "
                        f'CVL = "{LANGUAGE_VERSION}";',
                        stmt,
                    )
                )
            elif values[0].value != LANGUAGE_VERSION:
                self.diagnostics.add(
                    module.error(
                        CvlVersionError,
                        f'CVL version "{values[0].value}" is not supported; this is CVL '
                        f"{LANGUAGE_VERSION}",
                        values[0],
                    )
                )

    def _import_spec(self, module: Module, stmt: Import) -> dict[str, str] | None:
        """The url/cvl/version of an import map, or None after reporting what is wrong."""
        spec: dict[str, str] = {}
        ok = True
        for pair in stmt.spec.pairs:
            if pair.key not in IMPORT_KEYS:
                self.diagnostics.add(
                    module.error(
                        CvlImportError,
                        f"unknown import key {pair.key!r}; "
                        "expected url, cvl and optionally version",
                        pair,
                    )
                )
                ok = False
            elif pair.key in spec:
                self.diagnostics.add(
                    module.error(CvlImportError, f"import key {pair.key!r} given twice", pair)
                )
                ok = False
            elif not isinstance(pair.value, Str):
                what = "a map" if isinstance(pair.value, MapLit) else "a reference"
                self.diagnostics.add(
                    module.error(
                        CvlImportError,
                        f"import key {pair.key!r} must be a quoted string, not {what}",
                        pair.value,
                    )
                )
                ok = False
            else:
                spec[pair.key] = pair.value.value
        for key in ("url", "cvl"):
            if ok and key not in spec:
                self.diagnostics.add(
                    module.error(
                        CvlImportError, f"import of {stmt.name.text} has no {key} =>", stmt.spec
                    )
                )
                ok = False
        return spec if ok else None

    def _import(self, module: Module, stmt: Import) -> None:
        name = stmt.name.text
        if name in module.namespace and module.namespace[name].module is not self.prelude:
            self.diagnostics.add(
                module.error(
                    CvlDeclarationError, f"{name} is imported twice in this file", stmt.name
                )
            )
            return
        module.broken.add(name)
        spec = self._import_spec(module, stmt)
        if spec is None:
            return
        site = ImportSite(module.file, stmt.line, stmt.col)
        try:
            url = canonical_url(spec["url"], module.base_dir)
        except CvlError as exc:
            self.diagnostics.add(module.error(type(exc), exc.message, stmt.spec))
            return
        cvl, requested = spec["cvl"], spec.get("version")
        if (url, cvl) in self._loading:
            cycle = [f"{u}/{c}" for u, c in self._loading[self._loading.index((url, cvl)) :]]
            self.diagnostics.add(
                module.error(
                    CvlImportError,
                    "import cycle: " + " -> ".join([*cycle, f"{url}/{cvl}"]),
                    stmt,
                )
            )
            return
        imported = self._fetch_module(module, stmt, name, url, cvl, requested, site)
        if imported is None:
            return
        typedef = imported.objects.get(name)
        if typedef is None:
            defined = ", ".join(sorted(imported.objects)) or "nothing"
            self.diagnostics.add(
                module.error(
                    CvlImportError,
                    f"{imported.file} does not define {name} (it defines {defined})",
                    stmt.name,
                )
            )
            return
        module.broken.discard(name)
        module.namespace[name] = typedef

    def _fetch_module(
        self,
        module: Module,
        stmt: Import,
        name: str,
        url: str,
        cvl: str,
        requested: str | None,
        site: ImportSite,
    ) -> Module | None:
        key = (url, cvl, requested)
        if key not in self._fetched:
            try:
                self._fetched[key] = self.resolver.fetch(url, cvl, requested, module.base_dir)
            except CvlError as exc:
                error = exc.located(
                    module.file,
                    stmt.line,
                    stmt.col,
                    module.program.source_line(stmt.line),
                    module.chain,
                )
                error.message = f"cannot import {name}: {exc.message}"
                self.diagnostics.add(error)
                return None
            except Exception as exc:  # noqa: BLE001 - a pluggable resolver's own failure
                self.diagnostics.add(
                    module.error(
                        CvlImportError, f"cannot import {name}: {type(exc).__name__}: {exc}", stmt
                    )
                )
                return None
        text, resolved = self._fetched[key]
        if (url, cvl, resolved) in self._modules:
            return self._modules[(url, cvl, resolved)]
        if requested is not None and resolved == UNVERSIONED:
            self.warnings.append(
                f"{site}: {name} pins version {requested}, but {url} is a plain directory "
                "(unversioned); using the file it holds now"
            )
        self.imports.append(
            ImportRecord(
                name=name,
                url=url,
                cvl=cvl,
                version=resolved,
                pinned=requested is not None,
                requested=requested,
            )
        )
        origin = Origin(name=name, url=url, cvl=cvl, version=resolved)
        if url.startswith("file:"):
            base_dir: str | None = file_url_path(url, None)
            file = f"{base_dir}/{cvl}"
        else:
            base_dir = None
            file = f"{url}/versions/{resolved}/{cvl}"
        self._loading.append((url, cvl))
        try:
            imported = self._load(text, file, origin, base_dir, (*module.chain, site))
        finally:
            self._loading.pop()
        if imported is not None:
            self._modules[(url, cvl, resolved)] = imported
        return imported
