"""The sensitive values the daemon holds for automatic updates: in memory only.

The values never reach a file; the state database records only which keys a VAP had, so after
a restart an automatic update knows what it lost and waits for its user (README, "sensitive").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from utility.adapters.store import Store


class HeldSecrets:
    """Per VAP name, the sensitive values its user last supplied."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._values: dict[str, dict[str, str]] = {}

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
