"""What a VAP looks like now, for `cui status` and the pages: each component, where and how."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from utility.adapters.store import ACTIVE, Store, VapRow, VmRow, short_name
from utility.core.desired_state import MASK, Vm

_NETWORK_FIELDS: dict[type, tuple[str, ...]] = {}


class StatusView:
    """Reads VAP status from the state database.

    Args:
        store: the state database.
        clock: "now", for uptimes (tests pass their own).
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def vap_status(self, vap_id: int) -> dict[str, Any]:
        """One VAP's status: per component path, type, version, host, interfaces, state, uptime."""
        return self.render(self.store.vap(vap_id), self.store.vms(vap_id))

    def statuses(self, vaps: list[VapRow]) -> list[dict[str, Any]]:
        """The status of each of `vaps`, read with one query however many there are."""
        rows = self.store.vms_of([v.id for v in vaps])
        return [self.render(v, rows[v.id]) for v in vaps]

    def render(self, vap: VapRow, vm_rows: list[VmRow]) -> dict[str, Any]:
        """The status of `vap` whose VM records are `vm_rows`."""
        rows = {r.path: r for r in vm_rows}
        now = self.clock()
        components = []
        state = vap.state
        for vm in state.vms if state else ():
            row = rows.get(vm.path)
            running = row is not None and row.state == "running"
            components.append(
                {
                    "path": vm.path,
                    "type": vm.type,
                    "version": (vm.origin or {}).get("version"),
                    "repository": (vm.origin or {}).get("url"),
                    "host": vm.host,
                    "domain": vm.domain,
                    "memory": vm.memory,
                    "interfaces": [
                        {
                            "name": i.name,
                            "ip": i.ip,
                            "mac": i.mac,
                            "network": i.network,
                            "netmask": i.netmask,
                        }
                        for i in vm.interfaces
                    ],
                    "state": row.state if row else "stopped",
                    "boot_seq": row.boot_seq if row else None,
                    "uptime": round(now - row.started, 3)
                    if running and row and row.started
                    else None,
                    "started": row.started if running and row else None,
                    "params": _masked_params(vm),
                }
            )
        for path, row in rows.items():
            if state is None or state.vm(path) is None:
                components.append(
                    {
                        "path": path,
                        "host": row.host,
                        "domain": row.domain,
                        "state": row.state,
                        "boot_seq": row.boot_seq,
                        "interfaces": [],
                        "uptime": None,
                    }
                )
        boot_order = [
            r.path
            for r in sorted(rows.values(), key=lambda r: r.boot_seq or 0)
            if r.boot_seq is not None
        ]
        return {
            "id": vap.id,
            "name": short_name(vap.name),
            "vap": vap.name,
            "owner": vap.owner,
            "status": vap.status,
            "error": vap.error,
            "appliance": state.appliance if state else None,
            "vlans": dict(state.vlans) if state and vap.status in ACTIVE else {},
            "networks": [_shallow(n) for n in state.networks] if state else [],
            "boot_order": boot_order,
            "components": components,
        }


def _masked_params(vm: Vm) -> dict[str, list[str]]:
    """The VM's parameters for display, sensitive values masked (as `Vm.masked`, without
    copying the VM: status of a thousand VAPs renders every one)."""
    hidden = set(vm.sensitive)
    return {k: [MASK] * len(v) if k in hidden else list(v) for k, v in vm.params}


def _shallow(item: Any) -> dict[str, Any]:
    """A flat dataclass (a network) as a dict, without `dataclasses.asdict`'s deep copy."""
    names = _NETWORK_FIELDS.get(type(item))
    if names is None:
        names = _NETWORK_FIELDS[type(item)] = tuple(f.name for f in dataclasses.fields(item))
    return {name: getattr(item, name) for name in names}
