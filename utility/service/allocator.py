"""The one allocation protocol of start and update: propose, then reserve exactly that.

`propose` reads the free pools and places and addresses what is new, writing nothing. The slow
work (downloads, the address-filled evaluation) may come between; `reserve` then claims exactly
the proposal under the allocation lock, or raises `Conflict` when another VAP took any part of
it meanwhile. Start proposes again right before it reserves (nothing depends on its earlier
proposal, which only collected problems); update reserves the proposal its plan was built on.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from utility.adapters.allocations import Allocations, Reservation
from utility.adapters.store import Store
from utility.core import addresses
from utility.core.model_view import ModelView
from utility.core.placement import place
from utility.errors import Conflict, PlacementError, PoolExhausted
from utility.service.desired import Prepared, Settings, demands, domain_name


@dataclass(frozen=True)
class Proposal:
    """Hosts for the VMs placed now, addresses of the whole VAP, and what could not be had."""

    placement: dict[str, str]
    addressing: addresses.Addressing
    keep: addresses.Addressing | None = None
    problems: list[str] = field(default_factory=list)


class Allocator:
    """Placement and addressing against the pools, serialised by one lock."""

    def __init__(self, store: Store, allocations: Allocations, settings: Settings) -> None:
        self.store = store
        self.allocations = allocations
        self.settings = settings
        self._lock = threading.Lock()

    @contextmanager
    def session(self) -> Iterator[sqlite3.Connection]:
        """The allocation lock and a write transaction (a reservation and its records commit
        together)."""
        with self._lock, self.store.transaction() as db:
            yield db

    def propose(
        self,
        db: sqlite3.Connection,
        model: ModelView,
        prepared: Mapping[str, Prepared],
        keep: addresses.Addressing | None = None,
    ) -> Proposal:
        """Place the VMs in `prepared` and address `model`; what `keep` holds stays."""
        problems: list[str] = []
        placement: dict[str, str] = {}
        try:
            placement = self._place(db, prepared)
        except PlacementError as exc:
            problems.append(str(exc))
        pools = self.allocations.free(db)
        addressing = addresses.Addressing({}, {})
        try:
            addressing = addresses.assign(
                model,
                pools.vlans,
                pools.public_ips,
                pools.taken_macs,
                self.settings.address_base,
                keep=keep,
                taken_ips=pools.taken_ips,
            )
        except PoolExhausted as exc:
            problems.append(str(exc))
        return Proposal(placement, addressing, keep, problems)

    def reserve(
        self,
        db: sqlite3.Connection,
        vap_id: int,
        proposal: Proposal,
        prepared: Mapping[str, Prepared],
    ) -> None:
        """Claim exactly `proposal` for `vap_id` (Conflict when it no longer fits as proposed)."""
        try:
            if prepared and self._place(db, prepared) != proposal.placement:
                raise Conflict("host room changed since the proposal")
        except PlacementError as exc:
            raise Conflict(str(exc)) from None
        claim = Reservation(
            placement=proposal.placement,
            addressing=proposal.addressing,
            domains={p: domain_name(self.settings, vap_id, p) for p in proposal.placement},
            memory={p: prepared[p].spec.memory for p in proposal.placement},
            keep=proposal.keep,
        )
        self.allocations.reserve(db, vap_id, claim)

    def _place(self, db: sqlite3.Connection, prepared: Mapping[str, Prepared]) -> dict[str, str]:
        """Hosts for the VMs in `prepared`, given what `db` says is in use (PlacementError)."""
        return place(demands(prepared), self.allocations.rooms(db), self.settings.placement)
