"""Evaluate a linked CVL module into a `Model`: instances, assignments, references, pending values.

The rules (paper, "The CVL Language"; issue 2):

* Every component is an instance of its type, instantiated recursively (`g.d.ethernet0`).
* Assignments run in this order and the last one wins: a component's own type (parent object's
  assignments before the child's), then the object that contains it, up to the root, then the
  `overrides` (`--set`). So a user's `d.domain = ...` beats Groupware's, which beats DNS's.
* A reference names a parameter relative to the object the assignment is written in, and is
  resolved against *final* values, lazily, with cycle detection (the error names the cycle).
* A value is a list of strings; a map item becomes one string (`cvl.maps`); a map pair whose
  value has several strings repeats its key; a reference to a parameter without a value adds
  nothing (a pair with no value is left out of its map).
* Utility-assigned parameters (Interface mac/ip/subnet/netmask) without a value are *pending*, as
  is anything whose value depends on a pending one. `name` defaults to the component name (the
  object name for the root). A "required" parameter that is neither set nor pending is an error
  that names its path, where it was declared, and that the user's CVL must set it.

Evaluation is linear in the size of the tree: layouts are per type, values are computed once each
by an explicit-stack depth-first walk (no recursion limit on long reference chains).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cvl import maps
from cvl.diagnostics import Diagnostics
from cvl.errors import (
    CvlAssignmentError,
    CvlCycleError,
    CvlDeclarationError,
    CvlMissingError,
    CvlOverrideError,
)
from cvl.layout import Layout, Layouts
from cvl.loader import Module, TypeDef
from cvl.model import (
    UTILITY_ASSIGNED_INTERFACE_PARAMS,
    Component,
    Declared,
    ImportRecord,
    Model,
    Origin,
)
from cvl.syntax import Assign, MapLit, Ref, Rhs, Str

_NEW, _ACTIVE, _DONE = 0, 1, 2


class _Instance:
    """One node of the appliance tree under evaluation."""

    __slots__ = ("path", "name", "typedef", "layout", "children", "slots")

    def __init__(self, path: str, name: str, typedef: TypeDef, layout: Layout) -> None:
        self.path = path
        self.name = name
        self.typedef = typedef
        self.layout = layout
        self.children: dict[str, _Instance] = {}
        self.slots: dict[str, _Slot] = {
            pname: _Slot(self, pname, declared) for pname, declared in layout.declared.items()
        }

    def describe(self) -> str:
        return f"{self.typedef.name} (component {self.path})" if self.path else self.typedef.name


class _Slot:
    """One parameter of one instance: its final assignment, then its value."""

    __slots__ = (
        "inst",
        "name",
        "declared",
        "assign",
        "scope",
        "module",
        "override",
        "state",
        "value",
        "pending",
        "errored",
    )

    def __init__(self, inst: _Instance, name: str, declared: Declared) -> None:
        self.inst = inst
        self.name = name
        self.declared = declared
        self.assign: Assign | None = None
        self.scope: _Instance | None = None
        self.module: Module | None = None
        self.override: tuple[str, ...] | None = None
        self.state = _NEW
        self.value: tuple[str, ...] | None = None
        self.pending = False
        self.errored = False

    @property
    def path(self) -> str:
        return f"{self.inst.path}.{self.name}" if self.inst.path else self.name


def _walk(inst: _Instance, parts: Sequence[str]) -> tuple[_Slot | None, str]:
    """The slot a dotted path names relative to `inst`, or (None, why not)."""
    for part in parts[:-1]:
        child = inst.children.get(part)
        if child is None:
            if part in inst.slots:
                return None, f"{part!r} is a parameter of {inst.describe()}, not a component"
            return None, f"{inst.describe()} has no component {part!r}"
        inst = child
    last = parts[-1]
    slot = inst.slots.get(last)
    if slot is None:
        if last in inst.children:
            return None, f"{last!r} is a component of {inst.describe()}, not a parameter"
        return None, f"parameter {last!r} is not declared on {inst.describe()}"
    return slot, ""


class Evaluator:
    """Turns the root type of a loaded module into a `Model` (errors go to `diagnostics`)."""

    def __init__(self, diagnostics: Diagnostics) -> None:
        self.diagnostics = diagnostics
        self.layouts = Layouts(diagnostics)
        self.instances: list[_Instance] = []
        self._bad_statements: set[int] = set()

    # -- tree -----------------------------------------------------------------------------------

    def instantiate(self, root: TypeDef) -> _Instance:
        """Build the instance tree (pre-order list in `self.instances`)."""
        top = _Instance("", root.name, root, self.layouts.layout(root))
        self.instances.append(top)
        stack: list[tuple[_Instance, tuple[int, ...]]] = [(top, (id(root),))]
        while stack:
            inst, ancestry = stack.pop()
            created = []
            for comp in inst.layout.components:
                if id(comp.typedef) in ancestry:
                    self.diagnostics.add(
                        comp.module.error(
                            CvlCycleError,
                            f"component {comp.name} of type {comp.typedef.name} contains itself "
                            f"(through {inst.typedef.name})",
                            comp.at,
                        )
                    )
                    continue
                path = f"{inst.path}.{comp.name}" if inst.path else comp.name
                child = _Instance(path, comp.name, comp.typedef, self.layouts.layout(comp.typedef))
                inst.children[comp.name] = child
                created.append((child, (*ancestry, id(comp.typedef))))
            stack.extend(reversed(created))
        self.instances = []
        self._preorder(top)
        return top

    def _preorder(self, top: _Instance) -> None:
        stack = [top]
        while stack:
            inst = stack.pop()
            self.instances.append(inst)
            stack.extend(reversed(inst.children.values()))

    # -- assignments ----------------------------------------------------------------------------

    def bind(self) -> None:
        """Record each slot's final assignment: innermost instances first, then containers."""
        for inst in reversed(self.instances):
            for stmt, module in inst.layout.assigns:
                slot, why = _walk(inst, stmt.target.parts)
                if slot is None:
                    self._bad(module, stmt, f"cannot assign {stmt.target.dotted}: {why}")
                    continue
                slot.assign, slot.scope, slot.module = stmt, inst, module

    def _bad(self, module: Module, node: Assign | Ref, message: str) -> None:
        self.diagnostics.add(module.error(CvlAssignmentError, message, node))

    def check_references(self) -> None:
        """Report references to nothing in every assignment, including overridden ones (once)."""
        checked: set[tuple[int, int]] = set()
        for inst in self.instances:
            for stmt, module in inst.layout.assigns:
                key = (id(stmt), id(inst.typedef))
                if key in checked:
                    continue
                checked.add(key)
                for ref in _refs(stmt.values):
                    slot, why = _walk(inst, ref.parts)
                    if slot is None:
                        self._bad(module, ref, f"unknown reference {ref.dotted}: {why}")

    def apply_overrides(self, root: _Instance, overrides: Mapping[str, Sequence[str]]) -> None:
        """`--set PATH=VALUE`: replace a parameter's value after every CVL assignment."""
        for dotted, values in overrides.items():
            parts = dotted.split(".")
            if not all(parts):
                self.diagnostics.add(
                    CvlOverrideError(
                        f"{dotted!r} is not a parameter path like d.ethernet0.ip", file="--set"
                    )
                )
                continue
            slot, why = _walk(root, parts)
            if slot is None:
                self.diagnostics.add(
                    CvlOverrideError(f"cannot set {dotted}: {why}", file=f"--set {dotted}")
                )
                continue
            slot.override = tuple(values)

    # -- values ---------------------------------------------------------------------------------

    def evaluate_all(self) -> None:
        for inst in self.instances:
            for slot in inst.slots.values():
                if slot.state != _DONE:
                    self._evaluate(slot)

    def _deps(self, slot: _Slot) -> list[_Slot]:
        if slot.override is not None or slot.assign is None or slot.scope is None:
            return []
        found = []
        for ref in _refs(slot.assign.values):
            dep, _ = _walk(slot.scope, ref.parts)
            if dep is not None:
                found.append(dep)
        return found

    def _evaluate(self, start: _Slot) -> None:
        stack = [start]
        while stack:
            slot = stack[-1]
            if slot.state == _DONE:
                stack.pop()
                continue
            if slot.state == _NEW:
                slot.state = _ACTIVE
                for dep in self._deps(slot):
                    if dep.state == _ACTIVE:
                        self._cycle(stack, dep)
                    elif dep.state == _NEW:
                        stack.append(dep)
                continue
            self._compute(slot)
            slot.state = _DONE
            stack.pop()

    def _cycle(self, stack: list[_Slot], dep: _Slot) -> None:
        # The active slots are exactly the current depth-first path, each at its last position.
        last: dict[int, tuple[int, _Slot]] = {}
        for position, entry in enumerate(stack):
            if entry.state == _ACTIVE:
                last[id(entry)] = (position, entry)
        start = last[id(dep)][0]
        members = [
            entry
            for position, entry in sorted(last.values(), key=lambda pe: pe[0])
            if position >= start
        ]
        names = " -> ".join([*(s.path for s in members), dep.path])
        for member in members:
            member.errored = True
        assign, module = dep.assign, dep.module
        if assign is not None and module is not None:
            self.diagnostics.add(module.error(CvlCycleError, f"reference cycle: {names}", assign))

    def _compute(self, slot: _Slot) -> None:
        if slot.errored:
            return
        if slot.override is not None:
            slot.value = slot.override
            return
        if slot.assign is None or slot.scope is None:
            if slot.name == "name":
                slot.value = (slot.inst.name,)
            elif (
                slot.inst.layout.kind == "interface"
                and slot.name in UTILITY_ASSIGNED_INTERFACE_PARAMS
            ):
                slot.pending = True
            return
        out: list[str] = []
        for item in slot.assign.values:
            result = self._item(item, slot.scope)
            if result is None:
                return self._mark_unknown(slot)
            if result is _PENDING:
                slot.pending = True
                return
            out.extend(result)  # type: ignore[arg-type]
        slot.value = tuple(out) if out else None

    def _mark_unknown(self, slot: _Slot) -> None:
        slot.errored = True

    def _item(self, item: Rhs, scope: _Instance) -> tuple[str, ...] | object | None:
        """Strings of one right-hand-side item; `_PENDING`; None if it depends on an error."""
        if isinstance(item, Str):
            return (item.value,)
        if isinstance(item, Ref):
            dep, _ = _walk(scope, item.parts)
            if dep is None or dep.errored:
                return None
            if dep.pending:
                return _PENDING
            if dep.value is None and dep.declared.required:
                return None  # the missing required parameter is the error; do not cascade
            return dep.value or ()
        pairs: list[tuple[str, str]] = []
        for pair in item.pairs:
            result = self._item(pair.value, scope)
            if result is None or result is _PENDING:
                return result
            assert isinstance(result, tuple)
            pairs.extend((pair.key, value) for value in result)
        return (maps.encode(pairs),)

    def check_van_interfaces(self) -> None:
        """`vanIF` must name one interface inside the appliance (`ethernet0`, `f.ethernet1`)."""
        for inst in self.instances:
            slot = inst.slots.get("vanIF")
            if slot is None or slot.value is None or inst.layout.kind not in ("vm", "van"):
                continue
            problem = None
            if len(slot.value) != 1:
                problem = f"has {len(slot.value)} values; it names exactly one interface"
            else:
                target: _Instance | None = inst
                for part in slot.value[0].split("."):
                    target = target.children.get(part) if target is not None else None
                if target is None or target.layout.kind != "interface":
                    problem = (
                        f"is {slot.value[0]!r}, which is not an interface of "
                        f"{inst.describe()} (e.g. ethernet0, or f.ethernet1 in a VAN)"
                    )
            if problem is None:
                continue
            message = f"{slot.path} {problem}"
            if slot.override is not None:
                self.diagnostics.add(CvlOverrideError(message, file=f"--set {slot.path}"))
            elif slot.module is not None and slot.assign is not None:
                self.diagnostics.add(slot.module.error(CvlAssignmentError, message, slot.assign))

    # -- results --------------------------------------------------------------------------------

    def check_required(self, root_module: Module, root: _Instance) -> None:
        """Every "required" parameter must have a value or be pending (assigned by the utility)."""
        at = root.typedef.decl.name
        for inst in self.instances:
            for slot in inst.slots.values():
                if not slot.declared.required or slot.value is not None or slot.pending:
                    continue
                if slot.errored:
                    continue
                d = slot.declared
                if d.sensitive:
                    advice = (
                        f"it is sensitive, so the user agent supplies it at start "
                        f"(cui agent set {slot.path}); never write it in a CVL file"
                    )
                else:
                    advice = (
                        f'your CVL must set it, e.g. in {root.typedef.name}: {slot.path} = "...";'
                    )
                error = root_module.error(
                    CvlMissingError,
                    f"required parameter {slot.path} has no value: {d.owner} declares it "
                    f'"required" at {d.where}; {advice}',
                    at,
                )
                error.path = slot.path  # type: ignore[attr-defined]
                error.sensitive = d.sensitive  # type: ignore[attr-defined]
                self.diagnostics.add(error)

    def model(self, root_module: Module, imports: list[ImportRecord], warnings: list[str]) -> Model:
        components: dict[str, Component] = {}
        pending: list[str] = []
        origins: dict[int, Origin | None] = {}
        for inst in self.instances:
            params = {n: s.value for n, s in inst.slots.items() if s.value is not None}
            waiting = tuple(n for n, s in inst.slots.items() if s.pending)
            pending.extend(s.path for s in inst.slots.values() if s.pending)
            components[inst.path] = Component(
                path=inst.path,
                name=inst.name,
                type=inst.typedef.name,
                kind=inst.layout.kind or "",
                params=params,
                declared=inst.layout.declared,
                pending=waiting,
                origin=self._origin(inst, origins),
                children=tuple(child.path for child in inst.children.values()),
                interfaces=tuple(
                    child.path
                    for child in inst.children.values()
                    if child.layout.kind == "interface"
                ),
            )
        return Model(
            appliance=self.instances[0].typedef.name,
            file=root_module.file,
            base_dir=root_module.base_dir,
            components=components,
            pending=tuple(sorted(pending)),
            imports=tuple(imports),
            warnings=tuple(warnings),
        )

    def _origin(self, inst: _Instance, cache: dict[int, Origin | None]) -> Origin | None:
        key = id(inst.typedef)
        if key not in cache:
            cache[key] = next(
                (t.module.origin for t in reversed(inst.layout.chain) if t.module.origin), None
            )
        return cache[key]


_PENDING = object()


def _refs(values: Sequence[Rhs]) -> list[Ref]:
    """Every reference in a right-hand side, including inside (nested) maps."""
    found: list[Ref] = []
    todo: list[Rhs] = list(values)
    while todo:
        item = todo.pop()
        if isinstance(item, Ref):
            found.append(item)
        elif isinstance(item, MapLit):
            todo.extend(pair.value for pair in item.pairs)
    return found


def evaluate_module(
    module: Module,
    diagnostics: Diagnostics,
    overrides: Mapping[str, Sequence[str]] | None,
    imports: list[ImportRecord],
    warnings: list[str],
) -> Model | None:
    """Evaluate the last object declared in `module` (the file's appliance); None on errors."""
    objects = module.program.objects
    if not objects:
        diagnostics.add(
            module.error(
                CvlDeclarationError,
                "this file declares no appliance object (e.g. Mine extends VMAppliance { ... })",
                Str(value="", line=1, col=1),
            )
        )
        return None
    root_decl = objects[-1]
    root_type = module.objects.get(root_decl.name.text)
    if root_type is None or root_type.decl is not root_decl:
        return None
    evaluator = Evaluator(diagnostics)
    kind = evaluator.layouts.kind(root_type)
    if kind not in ("vm", "van"):
        if evaluator.layouts.broken(root_type):
            return None
        diagnostics.add(
            module.error(
                CvlDeclarationError,
                f"{root_type.name} is not an appliance: it must extend VMAppliance or VANAppliance "
                "(or an appliance that does)",
                root_decl.name,
            )
        )
        return None
    root = evaluator.instantiate(root_type)
    evaluator.bind()
    evaluator.check_references()
    evaluator.apply_overrides(root, overrides or {})
    evaluator.evaluate_all()
    if not diagnostics:  # a late consistency check; after other errors it would only cascade
        evaluator.check_van_interfaces()
    evaluator.check_required(module, root)
    if diagnostics:
        return None
    return evaluator.model(module, imports, warnings)
