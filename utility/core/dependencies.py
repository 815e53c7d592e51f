"""Boot order from `provides`/`requires` (paper, "Dependencies Between Appliances").

A VM that requires service S starts after every VM of the same VAP that provides S is ready;
it stops before them. Pure functions; problems are returned, not raised, so the pre-start checks
can report all of them together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Services:
    """What one VM provides and requires."""

    provides: tuple[str, ...]
    requires: tuple[str, ...]


def boot_needs(vms: Mapping[str, Services]) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Map each VM path to the VM paths it must start after, and list the problems.

    Problems: a required service nobody provides; a dependency cycle.
    """
    providers: dict[str, list[str]] = {}
    for path, services in vms.items():
        for service in services.provides:
            providers.setdefault(service, []).append(path)
    needs: dict[str, tuple[str, ...]] = {}
    problems: list[str] = []
    for path in sorted(vms):
        found: set[str] = set()
        for service in vms[path].requires:
            by = [p for p in providers.get(service, []) if p != path]
            if not by:
                problems.append(
                    f"{path or '(root)'} requires {service!r} but no component provides it"
                )
            found.update(by)
        needs[path] = tuple(sorted(found))
    cycle = find_cycle(needs)
    if cycle:
        problems.append("dependency cycle: " + " -> ".join(cycle))
    return needs, problems


def find_cycle(needs: Mapping[str, Sequence[str]]) -> list[str]:
    """A cycle in the needs graph as a path list (first node repeated at the end), or []."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        colour[node] = 1
        stack.append(node)
        for nxt in needs.get(node, ()):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in colour:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return []

    for node in sorted(needs):
        if node not in colour:
            found = visit(node)
            if found:
                return found
    return []


def waves(needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Group VMs into boot waves: each wave needs only earlier waves. Assumes no cycle."""
    remaining = {k: set(v) & set(needs) for k, v in needs.items()}
    done: set[str] = set()
    result: list[list[str]] = []
    while remaining:
        ready = sorted(k for k, v in remaining.items() if v <= done)
        if not ready:
            raise ValueError("dependency cycle")
        result.append(ready)
        done.update(ready)
        for k in ready:
            del remaining[k]
    return result
