"""What the pools hand out, in SQL: free pools, reserve, release and settle (the state layer).

`Store` (utility.adapters.store) owns the database and every other table; this object owns the
allocation rows (`vlans`, `public_ips`, `addresses`, `vms`) as they move between free and held.
Every statement runs inside a transaction the caller opened with `Store.transaction()`, so a
reservation and the VAP record it belongs to commit together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from utility.adapters.store import Store
from utility.core.addresses import PUBLIC, Addressing
from utility.core.placement import HostRoom
from utility.errors import Conflict


@dataclass(frozen=True)
class FreePools:
    """What an allocation may take, and what it must avoid."""

    vlans: list[int]
    public_ips: list[str]
    taken_macs: list[str]
    taken_ips: list[str]


@dataclass(frozen=True)
class Reservation:
    """Exactly what one VAP claims: new VLANs, interfaces and VM records.

    `keep` is what the VAP holds already (an update); those rows are not claimed again.
    """

    placement: Mapping[str, str]
    addressing: Addressing
    domains: Mapping[str, str]
    memory: Mapping[str, int]
    keep: Addressing | None = None


@dataclass(frozen=True)
class HeldRows:
    """What a VAP should keep after an update (see `Allocations.settle`)."""

    in_use: Mapping[str, set[str]]
    running: set[str]
    kept_stopped: set[str]
    vlans: set[int]


class Allocations:
    """The allocation rows of the state database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def free(self, db: sqlite3.Connection) -> FreePools:
        """The free pools and the taken addresses, as `db` sees them now."""
        vlans = [
            r[0] for r in db.execute("SELECT vlan FROM vlans WHERE vap_id IS NULL ORDER BY vlan")
        ]
        ips = [
            r[0] for r in db.execute("SELECT ip FROM public_ips WHERE vap_id IS NULL ORDER BY ip")
        ]
        ips.sort(key=lambda ip: tuple(int(p) for p in ip.split(".")))
        macs = [r[0] for r in db.execute("SELECT address FROM addresses WHERE kind='mac'")]
        taken = [r[0] for r in db.execute("SELECT address FROM addresses WHERE kind='ip'")]
        return FreePools(vlans, ips, macs, taken)

    def rooms(self, db: sqlite3.Connection) -> list[HostRoom]:
        """Every host with the memory and VM count active VAPs use on it; a host that is not
        `up` (suspect, failed, fencing) or is drained is not available for new VMs."""
        usage = self.store.usage(db)
        health = self.store.host_health()
        return [
            HostRoom(
                h.name,
                h.memory,
                h.max_vms,
                *usage.get(h.name, (0, 0)),
                available=health[h.name].health == "up" and not health[h.name].drained,
            )
            for h in self.store.hosts()
        ]

    def reserve(self, db: sqlite3.Connection, vap_id: int, claim: Reservation) -> None:
        """Claim exactly `claim` for `vap_id` (Conflict when another VAP holds any part of it)."""
        kept_vlans = set(claim.keep.vlans.values()) if claim.keep else set()
        kept_ifaces = set(claim.keep.interfaces.values()) if claim.keep else set()
        try:
            for segment, vlan in claim.addressing.vlans.items():
                if vlan not in kept_vlans:
                    _claim(
                        db.execute(
                            "UPDATE vlans SET vap_id=?, segment=? WHERE vlan=? AND vap_id IS NULL",
                            (vap_id, segment, vlan),
                        ),
                        f"VLAN {vlan}",
                    )
            for iface in claim.addressing.interfaces.values():
                if iface not in kept_ifaces:
                    self._claim_interface(
                        db, vap_id, iface.path, iface.mac, iface.ip, iface.segment
                    )
            for vm_path, host in claim.placement.items():
                db.execute(
                    "INSERT INTO vms (vap_id, path, host, domain, memory, state) "
                    "VALUES (?,?,?,?,?, 'pending')",
                    (vap_id, vm_path, host, claim.domains[vm_path], claim.memory[vm_path]),
                )
        except sqlite3.IntegrityError as exc:
            raise Conflict(
                f"an address was taken by a concurrent start or update ({exc})"
            ) from None

    @staticmethod
    def _claim_interface(
        db: sqlite3.Connection, vap_id: int, path: str, mac: str, ip: str, segment: str
    ) -> None:
        for address, kind in ((mac, "mac"), (ip, "ip")):
            db.execute("INSERT INTO addresses VALUES (?,?,?,?)", (address, kind, vap_id, path))
        if segment == PUBLIC:
            _claim(
                db.execute(
                    "UPDATE public_ips SET vap_id=?, iface=? WHERE ip=? AND vap_id IS NULL",
                    (vap_id, path, ip),
                ),
                f"public IP {ip}",
            )

    def release(self, db: sqlite3.Connection, vap_id: int) -> None:
        """Free every VLAN, public IP, address and VM record of a VAP."""
        db.execute("UPDATE vlans SET vap_id=NULL, segment=NULL WHERE vap_id=?", (vap_id,))
        db.execute("UPDATE public_ips SET vap_id=NULL, iface=NULL WHERE vap_id=?", (vap_id,))
        db.execute("DELETE FROM addresses WHERE vap_id=?", (vap_id,))
        db.execute("DELETE FROM vms WHERE vap_id=?", (vap_id,))

    def held_vlans(self, vap_id: int) -> list[int]:
        """The VLAN tags a VAP holds."""
        rows = self.store.read().execute("SELECT vlan FROM vlans WHERE vap_id=?", (vap_id,))
        return [r[0] for r in rows]

    def held_addresses(self, vap_id: int) -> dict[str, dict[str, str]]:
        """interface path -> {"mac": ..., "ip": ...} of what a VAP holds."""
        held: dict[str, dict[str, str]] = {}
        for address, kind, holder, path in self.store.all_addresses():
            if holder == vap_id:
                held.setdefault(path, {})[kind] = address
        return held

    def held_public_ips(self, vap_id: int) -> set[str]:
        """The public IPs a VAP holds."""
        rows = self.store.read().execute("SELECT ip FROM public_ips WHERE vap_id=?", (vap_id,))
        return {r[0] for r in rows}

    def settle(self, vap_id: int, keep: HeldRows) -> list[str]:
        """Release every address, VLAN and VM record of a VAP that `keep` does not hold.

        An address is held when its VM runs and shows it (`in_use`), or when its VM was stopped
        on request and stays in the CVL (`kept_stopped`). Returns the VM paths whose record went.
        """
        dropped = []
        with self.store.transaction() as db:
            for address, iface in db.execute(
                "SELECT address, path FROM addresses WHERE vap_id=?", (vap_id,)
            ).fetchall():
                vm_path = iface.rpartition(".")[0]
                if vm_path in keep.running:
                    held = address in keep.in_use.get(iface, ())
                else:
                    held = vm_path in keep.kept_stopped
                if not held:
                    db.execute("DELETE FROM addresses WHERE address=?", (address,))
                    db.execute(
                        "UPDATE public_ips SET vap_id=NULL, iface=NULL WHERE ip=?", (address,)
                    )
            for (vlan,) in db.execute(
                "SELECT vlan FROM vlans WHERE vap_id=?", (vap_id,)
            ).fetchall():
                if vlan not in keep.vlans:
                    db.execute("UPDATE vlans SET vap_id=NULL, segment=NULL WHERE vlan=?", (vlan,))
            for (vm_path,) in db.execute(
                "SELECT path FROM vms WHERE vap_id=?", (vap_id,)
            ).fetchall():
                if vm_path not in keep.running | keep.kept_stopped:
                    db.execute("DELETE FROM vms WHERE vap_id=? AND path=?", (vap_id, vm_path))
                    dropped.append(vm_path)
        return dropped


def _claim(cursor: sqlite3.Cursor, what: str) -> None:
    """A pool entry must move from free to held exactly once (another VAP may have won it)."""
    if cursor.rowcount != 1:
        raise Conflict(f"{what} was taken by a concurrent start; start again")
