"""What every instance of an object type looks like: its kind, parameters, components, assignments.

Computed once per type (not per instance), so a VAN of 10,000 identical VMs costs one layout.
Inheritance is flattened here: the chain runs from the base object to the type itself, so the
parent's declarations and assignments come first and the child's assignments override.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cvl.diagnostics import Diagnostics
from cvl.errors import CvlCycleError, CvlDeclarationError
from cvl.loader import Module, TypeDef
from cvl.model import Declared
from cvl.syntax import Assign, CompDecl, Name, VarDecl

KIND_BY_BASE = {"VMAppliance": "vm", "VANAppliance": "van", "Interface": "interface"}
ATTRIBUTES = ("required", "sensitive")
ALLOWED_COMPONENTS = {"van": ("vm", "van"), "vm": ("interface",), "interface": ()}
KIND_NAMES = {"van": "VANAppliance", "vm": "VMAppliance", "interface": "Interface"}


@dataclass(eq=False)
class ComponentDecl:
    """A component `name` of type `typedef`, declared at `at` in `module`."""

    name: str
    typedef: TypeDef
    at: Name
    module: Module


@dataclass(eq=False)
class Layout:
    """The flattened shape of a type (see module docstring)."""

    typedef: TypeDef
    kind: str | None
    chain: list[TypeDef]
    declared: dict[str, Declared] = field(default_factory=dict)
    components: list[ComponentDecl] = field(default_factory=list)
    assigns: list[tuple[Assign, Module]] = field(default_factory=list)


class Layouts:
    """Computes and memoises the layout of each type, reporting declaration errors once."""

    def __init__(self, diagnostics: Diagnostics) -> None:
        self.diagnostics = diagnostics
        self._layouts: dict[int, Layout] = {}
        self._chains: dict[int, list[TypeDef]] = {}
        self._broken: set[int] = set()

    def broken(self, typedef: TypeDef) -> bool:
        """True if `typedef`'s extends chain stopped at an error (already reported)."""
        self.chain(typedef)
        return id(typedef) in self._broken

    def chain(self, typedef: TypeDef) -> list[TypeDef]:
        """Base object first, `typedef` last; stops (reported) at an unknown or cyclic parent."""
        if id(typedef) in self._chains:
            return self._chains[id(typedef)]
        chain = [typedef]
        seen = {id(typedef)}
        current = typedef
        while current.decl.parent is not None:
            parent_name = current.decl.parent
            parent = current.module.namespace.get(parent_name.text)
            if parent is None:
                if parent_name.text not in current.module.broken:
                    self.diagnostics.add(
                        current.module.error(
                            CvlDeclarationError,
                            f"{current.name} extends {parent_name.text}, which is not declared, "
                            "imported or predefined",
                            parent_name,
                        )
                    )
                self._broken.add(id(typedef))
                break
            if id(parent) in seen:
                names = " extends ".join(t.name for t in [*chain, parent])
                self.diagnostics.add(
                    current.module.error(CvlCycleError, f"inheritance cycle: {names}", parent_name)
                )
                self._broken.add(id(typedef))
                break
            seen.add(id(parent))
            chain.append(parent)
            current = parent
        chain.reverse()
        self._chains[id(typedef)] = chain
        return chain

    def kind(self, typedef: TypeDef) -> str | None:
        """vm, van or interface: decided by the first predefined base met walking up `extends`."""
        for ancestor in reversed(self.chain(typedef)):
            kind = KIND_BY_BASE.get(ancestor.name)
            if kind is not None:
                return kind
        return None

    def layout(self, typedef: TypeDef) -> Layout:
        known = self._layouts.get(id(typedef))
        if known is not None:
            return known
        chain = self.chain(typedef)
        layout = Layout(typedef=typedef, kind=self.kind(typedef), chain=chain)
        places: dict[str, tuple[TypeDef, Name]] = {}
        for owner in chain:
            for stmt in owner.decl.body:
                if isinstance(stmt, VarDecl):
                    self._declare_vars(layout, owner, stmt, places)
                elif isinstance(stmt, CompDecl):
                    self._declare_components(layout, owner, stmt, places)
                else:
                    layout.assigns.append((stmt, owner.module))
        # The type's own declarations first, then its parent's, ... (as README's example lists
        # `required`); each object's in source order.
        by_owner: dict[str, list[tuple[str, Declared]]] = {}
        for name, declared in layout.declared.items():
            by_owner.setdefault(declared.owner, []).append((name, declared))
        layout.declared = {n: d for owner in reversed(by_owner) for n, d in by_owner[owner]}
        self._layouts[id(typedef)] = layout
        return layout

    def _claim(
        self,
        owner: TypeDef,
        name: Name,
        places: dict[str, tuple[TypeDef, Name]],
    ) -> bool:
        previous = places.get(name.text)
        if previous is None:
            places[name.text] = (owner, name)
            return True
        prev_owner, prev_name = previous
        where = f"{prev_owner.module.file}:{prev_name.line}:{prev_name.col}"
        self.diagnostics.add(
            owner.module.error(
                CvlDeclarationError,
                f"{name.text} is declared twice in {owner.name} (already declared by "
                f"{prev_owner.name} at {where})",
                name,
            )
        )
        return False

    def _declare_vars(
        self,
        layout: Layout,
        owner: TypeDef,
        stmt: VarDecl,
        places: dict[str, tuple[TypeDef, Name]],
    ) -> None:
        attrs = set()
        for attr in stmt.attrs:
            if attr.value not in ATTRIBUTES:
                self.diagnostics.add(
                    owner.module.error(
                        CvlDeclarationError,
                        f'unknown attribute "{attr.value}"; expected "required" or "sensitive"',
                        attr,
                    )
                )
            attrs.add(attr.value)
        for name in stmt.names:
            if self._claim(owner, name, places):
                layout.declared[name.text] = Declared(
                    name=name.text,
                    required="required" in attrs,
                    sensitive="sensitive" in attrs,
                    owner=owner.name,
                    file=owner.module.file,
                    line=name.line,
                    col=name.col,
                )

    def _declare_components(
        self,
        layout: Layout,
        owner: TypeDef,
        stmt: CompDecl,
        places: dict[str, tuple[TypeDef, Name]],
    ) -> None:
        module = owner.module
        comp_type = module.namespace.get(stmt.type.text)
        if comp_type is None:
            if stmt.type.text not in module.broken:
                self.diagnostics.add(
                    module.error(
                        CvlDeclarationError,
                        f"unknown component type {stmt.type.text}: not declared, imported or "
                        "predefined in this file",
                        stmt.type,
                    )
                )
            return
        comp_kind = self.kind(comp_type)
        if comp_kind is None and self.broken(comp_type):
            return
        if comp_kind is None:
            self.diagnostics.add(
                module.error(
                    CvlDeclarationError,
                    f"{comp_type.name} cannot be a component: it does not extend VMAppliance, "
                    "VANAppliance or Interface",
                    stmt.type,
                )
            )
            return
        allowed = ALLOWED_COMPONENTS.get(layout.kind or "", ())
        if comp_kind not in allowed and not (layout.kind is None and self.broken(layout.typedef)):
            if comp_kind == "interface":
                rule = "only VMAppliances may have Interface components"
            else:
                rule = "only VANAppliances may have VMAppliance or VANAppliance components"
            self.diagnostics.add(
                module.error(
                    CvlDeclarationError,
                    f"{owner.name} cannot have a component of type {comp_type.name} "
                    f"({KIND_NAMES[comp_kind]}): {rule}",
                    stmt.type,
                )
            )
            return
        for name in stmt.names:
            if self._claim(owner, name, places):
                layout.components.append(ComponentDecl(name.text, comp_type, name, module))
