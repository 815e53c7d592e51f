"""The result of evaluating CVL: every component of an appliance with its flattened parameters.

This is what the rest of the system consumes (the utility's allocation, placement and planning,
`cui eval --json`). `Model.to_json()` is the contract written down in README.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

KINDS = ("van", "vm", "interface")

UTILITY_ASSIGNED_INTERFACE_PARAMS = frozenset({"mac", "ip", "subnet", "netmask"})
"""Interface parameters the Collective Utility assigns when it starts an appliance.

They are the utility's alone: CVL text and overrides cannot set them (another VAP's address must
never reach a guest); only the evaluator's `assigned=` channel fills them.
"""

MASK = "******"
"""What `to_json()` shows instead of a sensitive value (each sensitive parameter: `[MASK]`)."""


def is_utility_assigned(kind: str, name: str) -> bool:
    """True when the utility assigns parameter `name` of a component of `kind`."""
    return kind == "interface" and name in UTILITY_ASSIGNED_INTERFACE_PARAMS


@dataclass(frozen=True, slots=True)
class Origin:
    """The import a type came from: which repository version its `vm` file and disks live in."""

    name: str
    url: str
    cvl: str
    version: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "url": self.url, "cvl": self.cvl, "version": self.version}


@dataclass(frozen=True, slots=True)
class ImportRecord:
    """One import resolved during evaluation (transitively, each repository version once)."""

    name: str
    url: str
    cvl: str
    version: str
    pinned: bool
    requested: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "cvl": self.cvl,
            "version": self.version,
            "pinned": self.pinned,
            "requested": self.requested,
        }


@dataclass(frozen=True, slots=True)
class Declared:
    """A declared parameter: its attributes and where it was declared."""

    name: str
    required: bool
    sensitive: bool
    owner: str
    file: str
    line: int
    col: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Component:
    """One node of the appliance tree: the root (path ""), a VM or VAN component, an interface."""

    path: str
    name: str
    type: str
    kind: str
    params: dict[str, tuple[str, ...]]
    declared: dict[str, Declared]
    pending: tuple[str, ...]
    origin: Origin | None
    children: tuple[str, ...] = field(default=())
    interfaces: tuple[str, ...] = field(default=())
    """Paths of this VM's Interface components, in declaration order (`ethernet0` first)."""
    sensitive_params: tuple[str, ...] = field(default=())
    """Parameters whose value is sensitive: declared "sensitive", or computed from a value that
    is (a reference to one, a map holding one, transitively). Declaration order."""

    def param(self, name: str) -> tuple[str, ...] | None:
        """The value of parameter `name`, or None if it has none (unset or pending)."""
        return self.params.get(name)

    def first(self, name: str, default: str | None = None) -> str | None:
        """The first string of parameter `name` (most parameters hold exactly one)."""
        value = self.params.get(name)
        return value[0] if value else default

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(n for n, d in self.declared.items() if d.required)

    @property
    def sensitive(self) -> tuple[str, ...]:
        """Same as `sensitive_params`: declared sensitive or derived from a sensitive value."""
        return self.sensitive_params

    def child_path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def to_json(self, reveal: bool = False) -> dict[str, Any]:
        """The README contract for one component; sensitive values are `[MASK]` unless `reveal`."""
        hidden = () if reveal else self.sensitive_params
        return {
            "type": self.type,
            "kind": self.kind,
            "params": {k: [MASK] if k in hidden else list(v) for k, v in self.params.items()},
            "sensitive": list(self.sensitive_params),
            "required": list(self.required),
            "origin": self.origin.to_json() if self.origin else None,
        }


@dataclass(frozen=True, slots=True)
class Model:
    """An evaluated appliance: components by path (pre-order), pending parameters, imports."""

    appliance: str
    file: str
    base_dir: str | None
    components: dict[str, Component]
    pending: tuple[str, ...]
    imports: tuple[ImportRecord, ...]
    warnings: tuple[str, ...] = ()

    @property
    def root(self) -> Component:
        return self.components[""]

    def component(self, path: str) -> Component:
        """The component at `path` (`""`, `d`, `d.ethernet0`); KeyError if there is none."""
        return self.components[path]

    def children(self, path: str = "") -> list[Component]:
        """The direct components of the component at `path`, in declaration order."""
        return [self.components[p] for p in self.components[path].children]

    def interfaces(self, path: str) -> list[Component]:
        """The interfaces of the VM at `path`, in declaration order (`ethernet0` first)."""
        return [c for c in self.children(path) if c.kind == "interface"]

    def vms(self) -> list[Component]:
        """Every VM appliance in the tree (pre-order), including the root if it is one."""
        return [c for c in self.components.values() if c.kind == "vm"]

    def vans(self) -> list[Component]:
        """Every VAN appliance in the tree (pre-order), including the root if it is one."""
        return [c for c in self.components.values() if c.kind == "van"]

    def value(self, dotted: str) -> tuple[str, ...] | None:
        """The value of a parameter by full path (`d.domain`, `domain`), None if unset/pending."""
        path, _, name = dotted.rpartition(".")
        component = self.components.get(path)
        return component.param(name) if component else None

    def walk(self) -> Iterator[Component]:
        return iter(self.components.values())

    def sensitive_paths(self) -> tuple[str, ...]:
        """Full paths of every sensitive parameter, declared or derived, sorted."""
        return tuple(
            sorted(c.child_path(n) for c in self.components.values() for n in c.sensitive_params)
        )

    def is_sensitive(self, dotted: str) -> bool:
        """True when the parameter at full path `dotted` holds (or would hold) a sensitive value."""
        path, _, name = dotted.rpartition(".")
        component = self.components.get(path)
        return component is not None and name in component.sensitive_params

    def to_json(self, reveal: bool = False) -> dict[str, Any]:
        """The README contract: appliance, components{PATH: ...}, pending, sensitive, imports.

        Every sensitive value is `[MASK]`. `reveal=True` is for the one consumer that hands
        parameters to the guest (the utility's final evaluation); nothing else should ask.
        """
        return {
            "appliance": self.appliance,
            "components": {path: c.to_json(reveal) for path, c in self.components.items()},
            "pending": list(self.pending),
            "sensitive": list(self.sensitive_paths()),
            "imports": [record.to_json() for record in self.imports],
        }
