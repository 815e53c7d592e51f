"""What a VAP looks like now, for `cui status` and the pages: each component, where and how."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from utility.adapters.store import ACTIVE, Store, short_name


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
        vap = self.store.vap(vap_id)
        rows = {r.path: r for r in self.store.vms(vap_id)}
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
                    "params": {k: list(v) for k, v in vm.masked().params},
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
            "networks": [dataclasses.asdict(n) for n in state.networks] if state else [],
            "boot_order": boot_order,
            "components": components,
        }
