"""The sensitive values the daemon holds for automatic updates and restarts: in memory only.

The values never reach a file; the state database records only which keys a VAP had, so after
a restart an automatic update knows what it lost and waits for its user (README, "sensitive").
Beside the user's values the daemon holds, per VAP, the sensitive parameters of each VM as they
were last booted (`hold`), so that a VM restarted after a crash or on another host after its host
failed gets them back (`unmask`); after a daemon restart they are gone and such a VM stays down.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Mapping

from utility.adapters.store import Store
from utility.core.desired_state import MASK, VapState, Vm


class HeldSecrets:
    """Per VAP name, the sensitive values its user last supplied."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._values: dict[str, dict[str, str]] = {}
        self._params: dict[int, dict[str, dict[str, tuple[str, ...]]]] = {}

    def values(self, name: str) -> dict[str, str]:
        """What the daemon holds for VAP `name` (empty after a restart)."""
        return dict(self._values.get(name, {}))

    def remember(
        self,
        vap_id: int,
        name: str,
        secrets: Mapping[str, str],
        db: sqlite3.Connection | None = None,
    ) -> None:
        """Hold `secrets` for later updates and record their keys (in `db`'s transaction)."""
        self._values[name] = dict(secrets)
        self.store.set_secret_keys(vap_id, [k for k, v in secrets.items() if v], db)

    def lost(self, vap_id: int, secrets: Mapping[str, str]) -> list[str]:
        """The recorded keys of `vap_id` that `secrets` has no value for."""
        return sorted(self.store.secret_keys(vap_id) - {k for k, v in secrets.items() if v})

    def hold(self, vap_id: int, state: VapState) -> None:
        """Remember the sensitive parameters of `state`'s VMs as booted (unmasked values only;
        a VM's earlier values are replaced, other VMs' kept)."""
        held = self._params.setdefault(vap_id, {})
        for vm in state.vms:
            hidden = set(vm.sensitive)
            values = {k: v for k, v in vm.params if k in hidden and MASK not in v}
            if values:
                held[vm.path] = values

    def forget(self, vap_id: int) -> None:
        """Drop what `hold` kept for VAP `vap_id` (it stopped)."""
        self._params.pop(vap_id, None)

    def unmask(self, vap_id: int, vm: Vm) -> Vm | None:
        """`vm` with its masked sensitive parameters filled in from what `hold` kept; `vm` itself
        when it has none; None when a value is not held (the daemon restarted since)."""
        held = self._params.get(vap_id, {}).get(vm.path, {})
        params = []
        for key, values in vm.params:
            if key in vm.sensitive and MASK in values:
                if key not in held:
                    return None
                values = held[key]
            params.append((key, values))
        return dataclasses.replace(vm, params=tuple(params))

    def unmask_state(self, vap_id: int, state: VapState, paths: set[str]) -> VapState | None:
        """`state` with the VMs at `paths` unmasked (`unmask`); None when one cannot be."""
        vms = []
        for vm in state.vms:
            if vm.path in paths:
                full = self.unmask(vap_id, vm)
                if full is None:
                    return None
                vm = full
            vms.append(vm)
        return dataclasses.replace(state, vms=tuple(vms))
