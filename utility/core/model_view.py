"""A typed, read-only view of an evaluated CVL model (the `Model.to_json()` contract in README).

The utility never reaches into `cvl` internals: it reads the JSON-shaped dict the CVL part
promises, so tests can hand it a dict and the allocator, planner and checks stay pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


def join_path(parent: str, name: str) -> str:
    """The dotted path of child `name` under `parent` ("" is the root)."""
    return name if not parent else f"{parent}.{name}"


def parent_path(path: str) -> str | None:
    """The path of the component containing `path`; None for the root."""
    if not path:
        return None
    return path.rpartition(".")[0]


def leaf_name(path: str) -> str:
    """The last segment of a dotted path ("f" for "g.f")."""
    return path.rpartition(".")[2]


@dataclass(frozen=True)
class Origin:
    """The repository version that defined a component's type."""

    name: str
    url: str
    cvl: str
    version: str


@dataclass(frozen=True)
class Component:
    """One component of the model: the root VAN, a sub-VAN, a VM appliance or an interface."""

    path: str
    type: str
    kind: str
    params: Mapping[str, tuple[str, ...]]
    sensitive: frozenset[str]
    required: tuple[str, ...]
    origin: Origin | None

    def value(self, name: str) -> tuple[str, ...]:
        """The values of parameter `name`, or () when it has none."""
        return self.params.get(name, ())

    def first(self, name: str, default: str | None = None) -> str | None:
        """The first value of parameter `name`, or `default`."""
        values = self.params.get(name, ())
        return values[0] if values else default


@dataclass(frozen=True)
class ModelView:
    """The evaluated model: components by path, pending utility-assigned parameters, imports."""

    appliance: str
    components: Mapping[str, Component]
    pending: tuple[str, ...]
    imports: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelView:
        """Build the view from `Model.to_json()`; unknown keys are ignored."""
        components: dict[str, Component] = {}
        for path, raw in data["components"].items():
            origin = raw.get("origin")
            components[path] = Component(
                path=path,
                type=raw["type"],
                kind=raw["kind"],
                params={k: tuple(v) for k, v in raw.get("params", {}).items()},
                sensitive=frozenset(raw.get("sensitive", ())),
                required=tuple(raw.get("required", ())),
                origin=Origin(
                    name=origin.get("name", ""),
                    url=origin["url"],
                    cvl=origin.get("cvl", ""),
                    version=str(origin["version"]),
                )
                if origin
                else None,
            )
        return cls(
            appliance=data.get("appliance", ""),
            components=components,
            pending=tuple(data.get("pending", ())),
            imports=tuple(data.get("imports", ())),
        )

    @property
    def root(self) -> Component:
        """The component the CVL file defines (path "")."""
        return self.components[""]

    def of_kind(self, kind: str) -> Iterator[Component]:
        """Components of one kind ("vm", "van", "interface") in path order."""
        for path in sorted(self.components):
            if self.components[path].kind == kind:
                yield self.components[path]

    def vms(self) -> list[Component]:
        """Every component VM appliance, at any depth."""
        return list(self.of_kind("vm"))

    def vans(self) -> list[Component]:
        """Every VAN (the root if it is one, and sub-VANs)."""
        return list(self.of_kind("van"))

    def interfaces(self, vm_path: str) -> list[Component]:
        """The interface components directly under VM `vm_path`, by name."""
        return [c for c in self.of_kind("interface") if parent_path(c.path) == vm_path]

    def enclosing_van(self, path: str) -> str | None:
        """The path of the nearest VAN strictly containing `path`; None at the top."""
        parent = parent_path(path)
        while parent is not None:
            if self.components.get(parent) and self.components[parent].kind == "van":
                return parent
            parent = parent_path(parent)
        return None
