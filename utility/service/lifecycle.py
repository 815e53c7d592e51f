"""Start, stop, rollback and reconciliation of VAPs.

Start is crash-safe: allocations and the VAP record (status `starting`) are committed in one
transaction before any host is touched; domains and networks are named from the VAP id. If the
daemon dies mid-start, `reconcile` on the next start-up finds the `starting` VAP, destroys
whatever of it exists, and releases its allocations. Authorisation is the facade's
(`utility.service.manager`); this service only does what it is asked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from utility.adapters.allocations import Allocations
from utility.adapters.bundles import BundleStore, StoredBundle
from utility.adapters.cvl_adapter import Source
from utility.adapters.db_check import mark_vaps_exist
from utility.adapters.store import (
    ACTIVE,
    NOT_RUNNING,
    RESTART_POLICIES,
    Store,
    VapRow,
    short_name,
)
from utility.core.bundle import Bundle
from utility.core.desired_state import VapState
from utility.errors import CheckFailed, HostUnreachable, NotFound, StartFailed, UtilityError
from utility.service.allocator import Allocator
from utility.service.apply import Applier
from utility.service.desired import Settings
from utility.service.hosts import Hosts
from utility.service.locks import VapLocks
from utility.service.pipeline import FetchReport, Pipeline
from utility.service.secrets import HeldSecrets
from utility.service.status import StatusView


@dataclasses.dataclass(frozen=True)
class Parts:
    """What start, stop and update work with (one of each per cluster manager)."""

    store: Store
    allocations: Allocations
    allocator: Allocator
    pipeline: Pipeline
    applier: Applier
    hosts: Hosts
    secrets: HeldSecrets
    locks: VapLocks
    status: StatusView
    settings: Settings
    bundles: BundleStore


class Lifecycle:
    """Start and stop of VAPs, rollback of a failed operation, reconciliation at start-up."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.store = parts.store

    def active(self, name: str) -> VapRow:
        """The active VAP named `name` (NotFound otherwise)."""
        vap = self.store.vap_by_name(name)
        if vap is None or vap.status not in ACTIVE:
            raise NotFound(f"{short_name(name)} is not running")
        return vap

    def source(self, vap_id: int, bundle: StoredBundle) -> Source:
        """What an evaluation of VAP `vap_id` reads: `bundle`, and the daemon's own `file:`
        directories only if an administrator started it (it is their file system)."""
        return Source(bundle, self.store.local_files(vap_id))

    def current_bundle(self, vap: VapRow) -> StoredBundle:
        """The bundle VAP `vap` runs (its newest recorded version)."""
        versions = self.store.vap_bundles(vap.id)
        if not versions:
            raise NotFound(
                f"{short_name(vap.name)} has no stored CVL bundle (started before VAPs were kept "
                "by content): give the CVL file again (cui update NAME FILE.cvl)"
            )
        return self.parts.bundles.load(str(versions[-1]["digest"]))

    # -- start ----------------------------------------------------------------------------------

    def start(
        self,
        owner: str,
        name: str,
        bundle: Bundle,
        secrets: Mapping[str, str],
        progress: FetchReport | None = None,
        restart: str = "always",
        local_files: bool = False,
    ) -> dict[str, Any]:
        """Start VAP `name` (`owner/short name`) from the CVL `bundle`; `restart` is its
        restart policy (`always`: crashed VMs are booted again; `never`); `local_files`: the
        daemon may read `file:` imports outside the bundle (an administrator starts it).

        Raises:
            CheckFailed: every pre-start problem, before anything ran.
            StartFailed: a later step failed; the VAP was rolled back to stopped.
        """
        p = self.parts
        if restart not in RESTART_POLICIES:
            raise UtilityError(f"field 'restart' must be one of {', '.join(RESTART_POLICIES)}")
        with p.locks.for_path(name):
            notes = p.hosts.ensure_default()
            pending = p.bundles.pending(bundle)
            checked = p.pipeline.check(name, Source(pending, local_files), secrets)
            with p.allocator.session() as db:  # a first proposal, for its problems only
                problems = (
                    checked.problems
                    + p.allocator.propose(db, checked.model, checked.prepared).problems
                )
            if problems:
                raise CheckFailed(problems)
            p.bundles.save(bundle)  # checked: what this VAP version runs is kept
            bases = p.pipeline.fetch_bases(checked.prepared, progress)
            with p.allocator.session() as db:
                vap_id = self.store.new_vap(db, name, owner)
                self.store.add_vap_bundle(vap_id, pending.digest, db)
                self.store.set_restart_policy(db, vap_id, restart)
                self.store.set_local_files(db, vap_id, local_files)
                mark_vaps_exist(self.store.path.parent)
                p.secrets.remember(vap_id, name, secrets, db)
                proposal = p.allocator.propose(db, checked.model, checked.prepared)
                if proposal.problems:
                    raise CheckFailed(proposal.problems)
                p.allocator.reserve(db, vap_id, proposal, checked.prepared)
            try:
                state = p.pipeline.desired_state(
                    vap_id, checked, proposal.addressing, proposal.placement, bases, secrets
                )
                self.store.set_vap(vap_id, state=state)
                p.secrets.hold(vap_id, state)
                outcome = p.applier.apply(vap_id, None, state).outcome
                if not outcome.ok:
                    raise UtilityError(outcome.error or "start failed")
            except BaseException as exc:
                self.roll_back(vap_id, f"start failed: {exc}")
                if isinstance(exc, UtilityError) and not isinstance(exc, CheckFailed):
                    raise StartFailed(
                        f"start of {short_name(name)} failed and was rolled back (VAP stopped, "
                        f"addresses released, data disks kept): {exc}"
                    ) from exc
                raise
            self.store.set_vap(vap_id, status="running")
            self.store.event(vap_id, "start", f"{owner} started {name} ({pending.root_path})")
            return {"id": vap_id, "notes": notes, **p.status.vap_status(vap_id)}

    # -- rollback -------------------------------------------------------------------------------

    def roll_back(self, vap_id: int, error: str) -> list[str]:
        """Stop whatever of a VAP exists, release its allocations, mark it failed."""
        p = self.parts
        vap = self.store.vap(vap_id)
        notes: list[str] = []
        if vap.state is not None:
            forced = dataclasses.replace(p.applier.timeouts, stop=0.0)  # force: it never ran
            outcome = p.applier.apply(vap_id, vap.state, None, keep_going=True, timeouts=forced)
            notes = (
                [outcome.outcome.error] if outcome.outcome.error else []
            ) + outcome.outcome.notes
        for row in self.store.vms(vap_id):
            try:
                p.hosts.host(row.host).destroy_domain(row.domain)
            except UtilityError as exc:
                notes.append(str(exc))
        if self._hold_if_unreachable(vap, error):
            return notes
        networks = [f"{p.settings.prefix}-v{v}" for v in p.allocations.held_vlans(vap_id)]
        for name in [*networks, f"{p.settings.prefix}-x{vap_id}"]:
            notes += p.hosts.remove_network_everywhere(name)
        with self.store.transaction() as db:
            p.allocations.release(db, vap_id)
            self.store.set_vap(vap_id, status="failed", error=error, db=db)
        self.store.event(vap_id, "rollback", error)
        return notes

    # -- stop -----------------------------------------------------------------------------------

    def stop(
        self,
        who: str,
        name: str,
        component: str | None = None,
        stop_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Stop a VAP in reverse boot order, or only `component` (a dotted path) and its parts.

        Returns:
            {"stopped": [paths], "warnings": [...], "problems": [...]}; a warning names each
            running component that requires a stopped one.
        """
        p = self.parts
        with p.locks.for_path(name):
            vap = self.active(name)
            state = vap.state
            if state is None:
                raise NotFound(f"{short_name(name)} has no recorded state")
            timeouts = (
                dataclasses.replace(p.applier.timeouts, stop=stop_timeout)
                if stop_timeout is not None
                else None
            )
            target = state.without(component) if component else None
            kept = {vm.path for vm in target.vms} if target else set()
            gone = {vm.path for vm in state.vms} - kept
            if component and not gone:
                raise NotFound(f"{short_name(name)}: no running component {component!r}")
            if not component:
                self.store.set_vap(vap.id, status="stopping")
            outcome = p.applier.apply(vap.id, state, target, keep_going=True, timeouts=timeouts)
            error = outcome.outcome.error
            problems = ([error] if error else []) + outcome.outcome.notes
            if target is not None:
                self.store.set_vap(vap.id, state=target)
            elif self._hold_if_unreachable(vap, "stop pending"):
                problems.append(
                    f"stop of {short_name(name)} is pending: {self.store.vap(vap.id).error}; its "
                    "addresses stay held until the host answers or is declared dead"
                )
            else:
                with self.store.transaction() as db:
                    p.allocations.release(db, vap.id)
                    self.store.set_vap(vap.id, status="stopped", db=db, error=error)
            self.store.event(
                vap.id, "stop", f"{who} stopped {component or 'all'} of {short_name(name)}"
            )
            return {
                "stopped": sorted(gone),
                "warnings": _warnings(target, gone),
                "problems": problems,
            }

    # -- unreachable hosts ----------------------------------------------------------------------

    def unreachable(self, vap_id: int) -> dict[str, str]:
        """Host -> why, for each host of the VAP's possibly running VMs that does not answer."""
        out: dict[str, str] = {}
        for row in self.store.vms(vap_id):
            if row.state in NOT_RUNNING or row.host in out:
                continue
            try:
                self.parts.hosts.host(row.host).connection()
            except HostUnreachable as exc:
                out[row.host] = str(exc)
            except UtilityError:
                continue
        return out

    def _hold_if_unreachable(self, vap: VapRow, why: str) -> bool:
        """If a host of the VAP's VMs does not answer: its VMs become `unknown`, the VAP stays
        `stopping` with its allocations (they may still run); True. Otherwise False."""
        away = self.unreachable(vap.id)
        if not away:
            return False
        for row in self.store.vms(vap.id):
            if row.host in away and row.state not in NOT_RUNNING:
                self.store.set_vm(vap.id, row.path, "unknown")
        error = f"{why}: host {', '.join(sorted(away))} unreachable"
        self.store.set_vap(vap.id, status="stopping", error=error)
        self.store.event(vap.id, "pending", error)
        return True

    def finish_stop(self, vap: VapRow) -> bool:
        """Complete a pending stop once every host of its VMs answers (or is declared dead);
        True when the VAP is now stopped and its allocations released."""
        if self.unreachable(vap.id):
            return False
        p = self.parts
        if vap.state is not None:
            current = vap.state
            for row in self.store.vms(vap.id):
                if row.state == "dead":  # on a host declared dead: nothing to reach there
                    current = current.without(row.path)
            forced = dataclasses.replace(p.applier.timeouts, stop=0.0)
            p.applier.apply(vap.id, current, None, keep_going=True, timeouts=forced)
        for row in self.store.vms(vap.id):
            if row.state not in NOT_RUNNING:
                self.store.set_vm(vap.id, row.path, "stopped")
        with self.store.transaction() as db:
            p.allocations.release(db, vap.id)
            self.store.set_vap(vap.id, status="stopped", db=db, error=None)
        text = f"pending stop of {vap.name} completed; allocations released"
        self.store.event(vap.id, "stop", text)
        self.store.add_history(vap.name, "stop", ["■ all"], {}, text)
        return True

    def host_dead(self, host: str, who: str) -> dict[str, list[str]]:
        """An administrator says `host` is gone for good: its VMs are `dead` (they no longer
        count or hold anything), pending stops that waited for it complete; recorded."""
        report: dict[str, list[str]] = {"dead": [], "stopped": []}
        for vap in self.store.vaps(ACTIVE):
            rows = [r for r in self.store.vms(vap.id) if r.host == host]
            if not rows:
                continue
            with self.parts.locks.for_path(vap.name):
                for row in rows:
                    if row.state not in NOT_RUNNING:
                        self.store.set_vm(vap.id, row.path, "dead")
                        report["dead"].append(f"{vap.name}:{row.path}")
                text = f"{who} declared host {host} dead: {', '.join(r.path for r in rows)} lost"
                self.store.event(vap.id, "host-dead", text)
                self.store.add_history(vap.name, "host-dead", [], {}, text)
                current = self.store.vap(vap.id)
                if current.status == "stopping" and self.finish_stop(current):
                    report["stopped"].append(vap.name)
        return report

    # -- reconciliation -------------------------------------------------------------------------

    def reconcile(self, recover: Callable[[VapRow], bool] | None = None) -> dict[str, Any]:
        """Bring the recorded state in line with what the hosts report (run at daemon start).

        - a VAP caught mid-stop finishes stopping once every host of its VMs answers;
        - a VAP caught mid-start/update is reconciled per component by `recover` (see
          `utility.service.recovery`); when it cannot be, rolled back to stopped, allocations
          released (held, and the VAP left `stopping`, while a host of its VMs does not answer);
        - a running VAP's VM whose domain is gone or not running is marked `crashed` (the
          watchdog restarts it under the VAP's restart policy);
        - a domain on a host that no active VAP owns is reported, never killed.
        """
        report: dict[str, Any] = {
            "rolled_back": [],
            "crashed": [],
            "unowned": [],
            "unreachable": [],
            "pending": [],
            "recovered": [],
        }
        for vap in self.store.vaps(("stopping",)):
            if not self.finish_stop(vap):
                report["pending"].append(vap.name)
        for vap in self.store.vaps(("starting", "updating")):
            if recover is not None and recover(vap):
                report["recovered"].append(vap.name)
                continue
            self.roll_back(
                vap.id, f"interrupted: the cluster manager stopped during {vap.status}; rolled back"
            )
            report["rolled_back"].append(vap.name)
        owned: set[tuple[str, str]] = set()
        for vap in self.store.vaps(("running",)):
            owned.update(self._mark_crashed(vap, report["crashed"]))
        for host in self.store.hosts():
            try:
                domains = self.parts.hosts.pool.get(host.name, host.uri).domains()
            except UtilityError as exc:
                report["unreachable"].append(str(exc))
                continue
            for info in domains:
                if (host.name, info.name) not in owned:
                    report["unowned"].append({"host": host.name, "domain": info.name})
        return report

    def _mark_crashed(self, vap: VapRow, crashed: list[str]) -> set[tuple[str, str]]:
        """Mark the VAP's running VMs whose domain is gone `crashed`; its (host, domain) pairs."""
        owned = set()
        for row in self.store.vms(vap.id):
            owned.add((row.host, row.domain))
            if row.state != "running":
                continue
            try:
                info = self.parts.hosts.host(row.host).domain(row.domain)
            except UtilityError:
                continue
            if info is None or not info.running:
                self.store.set_vm(vap.id, row.path, "crashed")
                self.store.event(
                    vap.id, "crashed", f"{row.path}: domain {row.domain} on {row.host} is gone"
                )
                crashed.append(f"{vap.name}:{row.path}")
        return owned


def _warnings(target: VapState | None, gone: set[str]) -> list[str]:
    """A warning for each VM that stays running but requires one being stopped."""
    return [
        f"warning: {vm.path} requires {need} ({', '.join(vm.requires)}), which is being stopped"
        for vm in (target.vms if target else ())
        for need in vm.needs
        if need in gone
    ]
