"""Start and stop of a VAP, and the allocation, disk fetching and rollback updates share.

Start is crash-safe: allocations and the VAP record (status `starting`) are committed in one
transaction before any host is touched; domains and networks are named from the VAP id. If the
daemon dies mid-start, `reconcile` on the next start-up finds the `starting` VAP, destroys
whatever of it exists, and releases its allocations.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utility.adapters import cvl_adapter
from utility.adapters.executor import Executor
from utility.adapters.trust_policy import TrustSession
from utility.core import addresses
from utility.core.addresses import PUBLIC
from utility.core.model_view import ModelView
from utility.core.placement import HostRoom, place
from utility.core.planner import Action, Op, start_plan, stop_plan
from utility.errors import (
    CheckFailed,
    Conflict,
    NotFound,
    PlacementError,
    PoolExhausted,
    StartFailed,
    TrustRefused,
    UtilityError,
)
from utility.service import allocation
from utility.service.allocation import Prepared
from utility.service.callers import Caller
from utility.service.manager_base import FetchReport, ManagerBase


class Lifecycle(ManagerBase):
    """Start and stop."""

    # -- start ----------------------------------------------------------------------------------

    def _checked(
        self, path: Path, secrets: Mapping[str, str]
    ) -> tuple[ModelView, dict[str, Prepared], list[str], TrustSession, list[cvl_adapter.Fetched]]:
        """Evaluate for the pre-start/pre-update checks and gather every static problem (CVL,
        trust, disks, blacklist), so start and update report the same things the same way.

        Raises:
            CheckFailed: the CVL does not evaluate at all.
        """
        trust = self.trust.session()
        fetched: list[cvl_adapter.Fetched] = []
        checked, problems = cvl_adapter.evaluate_for_checks(path, secrets, fetched)
        if checked is None:
            raise CheckFailed(problems)
        problems += trust.all_problems(versions_of(checked), fetched)
        prepared, more = allocation.prepare(checked, path.parent, trust.release_for)
        problems += more + allocation.static_problems(checked, self.store.blacklist())
        return checked, prepared, problems, trust, fetched

    def start(
        self,
        caller: Caller,
        cvl_path: str,
        secrets: Mapping[str, str] | None = None,
        progress: FetchReport | None = None,
    ) -> dict[str, Any]:
        """Start the VAP a CVL file describes; see the module docstring for the steps.

        Args:
            caller: who starts it (becomes the owner).
            cvl_path: absolute path of the user's CVL file.
            secrets: sensitive parameter values (override keys like `l.rootpw`), held only in
                memory and passed only to the VMs.
            progress: told `(label, bytes done, bytes total)` while disk objects download
                (None: a line on the daemon's stderr).

        Raises:
            CheckFailed: every pre-start problem, before anything ran.
            StartFailed: a later step failed; the VAP was rolled back to stopped.
        """
        path = Path(cvl_path).resolve()
        self._may_use(caller, path)
        secrets = dict(secrets or {})
        with self._lock_for(str(path)):
            notes = self._ensure_default_host()
            model, prepared, problems, trust, fetched = self._checked(path, secrets)
            with self.store.transaction() as db:
                problems += self._allocate(db, model, prepared, vap_id=None)[2]
            if problems:
                raise CheckFailed(problems)
            bases = self._fetch_bases(prepared, progress)
            with self._alloc_lock, self.store.transaction() as db:
                vap_id = self.store.new_vap(db, str(path), caller.name)
                self.store.set_secret_keys(vap_id, [k for k, v in secrets.items() if v], db)
                placement, addressing, problems = self._allocate(db, model, prepared, vap_id)
                if problems:
                    raise CheckFailed(problems)
            try:
                self._secrets[str(path)] = secrets
                return self._bring_up(
                    caller,
                    vap_id,
                    path,
                    model,
                    prepared,
                    placement,
                    addressing,
                    bases,
                    secrets,
                    notes,
                    trust,
                    fetched,
                )
            except BaseException as exc:
                self._roll_back(vap_id, f"start failed: {exc}")
                if isinstance(exc, UtilityError) and not isinstance(exc, CheckFailed):
                    raise StartFailed(
                        f"start of {path} failed and was rolled back (VAP stopped, addresses "
                        f"released, data disks kept): {exc}"
                    ) from exc
                raise

    def _bring_up(
        self,
        caller: Caller,
        vap_id: int,
        path: Path,
        model: ModelView,
        prepared: Mapping[str, Prepared],
        placement: Mapping[str, str],
        addressing: addresses.Addressing,
        bases: Mapping[tuple[str, str], str],
        secrets: Mapping[str, str],
        notes: list[str],
        trust: TrustSession,
        fetched: list[cvl_adapter.Fetched],
    ) -> dict[str, Any]:
        names = allocation.component_names(model)
        overrides = {**secrets, **addresses.overrides_for(model, addressing, names)}
        final = final_evaluation(path, overrides, trust, fetched)
        _same_versions(model, final)
        state = allocation.build_state(
            vap_id=vap_id,
            cvl_path=path,
            model=final,
            prepared=prepared,
            addressing=addressing,
            placement=placement,
            bases=bases,
            secrets=secrets,
            settings=self.settings,
            run_dir=self.run_dir,
        )
        self.store.set_vap(vap_id, state=state)
        outcome = self._executor(vap_id).run(start_plan(state))
        if not outcome.ok:
            raise UtilityError(outcome.error or "start failed")
        self.store.set_vap(vap_id, status="running")
        self.store.event(vap_id, "start", f"{caller.name} started {path}")
        return {"id": vap_id, "notes": notes, **self.vap_status(vap_id)}

    def _allocate(
        self,
        db: sqlite3.Connection,
        model: ModelView,
        prepared: Mapping[str, Prepared],
        vap_id: int | None,
        keep: addresses.Addressing | None = None,
    ) -> tuple[dict[str, str], addresses.Addressing, list[str]]:
        """Placement of `prepared` and addresses of `model`; with a `vap_id`, reserve them too.

        With `keep` (an update) only VMs in `prepared` are placed and only what `keep` lacks is
        allocated (see `_reserve`).
        """
        problems: list[str] = []
        placement: dict[str, str] = {}
        try:
            placement = self._place(db, prepared)
        except PlacementError as exc:
            problems.append(str(exc))
        free_vlans = [
            r[0] for r in db.execute("SELECT vlan FROM vlans WHERE vap_id IS NULL ORDER BY vlan")
        ]
        free_ips = [
            r[0] for r in db.execute("SELECT ip FROM public_ips WHERE vap_id IS NULL ORDER BY ip")
        ]
        free_ips.sort(key=lambda ip: tuple(int(p) for p in ip.split(".")))
        macs = [r[0] for r in db.execute("SELECT address FROM addresses WHERE kind='mac'")]
        ips = [r[0] for r in db.execute("SELECT address FROM addresses WHERE kind='ip'")]
        addressing = addresses.Addressing({}, {})
        try:
            addressing = addresses.assign(
                model,
                free_vlans,
                free_ips,
                macs,
                self.settings.address_base,
                keep=keep,
                taken_ips=ips,
            )
        except PoolExhausted as exc:
            problems.append(str(exc))
        if vap_id is None or problems:
            return placement, addressing, problems
        self._reserve(db, vap_id, placement, addressing, prepared, keep)
        return placement, addressing, []

    def _place(self, db: sqlite3.Connection, prepared: Mapping[str, Prepared]) -> dict[str, str]:
        """Hosts for the VMs in `prepared`, given what `db` says is in use (PlacementError)."""
        usage = self.store.usage(db)
        rooms = [
            HostRoom(h.name, h.memory, h.max_vms, *usage.get(h.name, (0, 0)))
            for h in self.store.hosts()
        ]
        return place(allocation.demands(prepared), rooms, self.settings.placement)

    def _reserve(
        self,
        db: sqlite3.Connection,
        vap_id: int,
        placement: Mapping[str, str],
        addressing: addresses.Addressing,
        prepared: Mapping[str, Prepared],
        keep: addresses.Addressing | None,
    ) -> None:
        """Record a VAP's allocations in `db`; what `keep` holds is already recorded."""
        kept_vlans = set(keep.vlans.values()) if keep else set()
        kept_ifaces = set(keep.interfaces.values()) if keep else set()
        for segment, vlan in addressing.vlans.items():
            if vlan in kept_vlans:
                continue
            _claim(
                db.execute(
                    "UPDATE vlans SET vap_id=?, segment=? WHERE vlan=? AND vap_id IS NULL",
                    (vap_id, segment, vlan),
                ),
                f"VLAN {vlan}",
            )
        for iface in addressing.interfaces.values():
            if iface in kept_ifaces:
                continue
            for address, kind in ((iface.mac, "mac"), (iface.ip, "ip")):
                db.execute(
                    "INSERT INTO addresses VALUES (?,?,?,?)", (address, kind, vap_id, iface.path)
                )
            if iface.segment == PUBLIC:
                _claim(
                    db.execute(
                        "UPDATE public_ips SET vap_id=?, iface=? WHERE ip=? AND vap_id IS NULL",
                        (vap_id, iface.path, iface.ip),
                    ),
                    f"public IP {iface.ip}",
                )
        for vm_path, host in placement.items():
            db.execute(
                "INSERT INTO vms (vap_id, path, host, domain, memory, state) "
                "VALUES (?,?,?,?,?, 'pending')",
                (
                    vap_id,
                    vm_path,
                    host,
                    f"{self.settings.prefix}-{vap_id}-{vm_path or 'root'}",
                    prepared[vm_path].spec.memory,
                ),
            )

    def _fetch_bases(
        self, prepared: Mapping[str, Prepared], progress: FetchReport | None = None
    ) -> dict[tuple[str, str], str]:
        """Local paths of each program disk's top image and of direct-boot kernels."""
        bases: dict[tuple[str, str], str] = {}
        data_targets = {p: {d for d, _ in prep.data_disks} for p, prep in prepared.items()}
        for vm_path, prep in prepared.items():
            for disk in prep.spec.disks:
                if disk.target not in data_targets[vm_path]:
                    label = f"{vm_path or '(root)'} {disk.source} ({prep.files.label})"
                    report = functools.partial(progress, label) if progress else None
                    bases[(vm_path, disk.target)] = str(
                        prep.files.local_path(disk.source, self.cache_dir, report)
                    )
            for key in ("kernel", "initrd"):
                name = getattr(prep.spec, key)
                if name:
                    bases[(vm_path, f"os:{key}")] = str(prep.files.local_path(name, self.cache_dir))
        return bases

    def _executor(self, vap_id: int, attic: Path | None = None) -> Executor:
        def report(action: Action, phase: str) -> None:
            if action.vm is None:
                return
            if action.op in (Op.START, Op.UPDATE):
                if phase == "begin":
                    self.store.set_vm(vap_id, action.vm.path, "booting")
                else:
                    self.store.set_vm(
                        vap_id, action.vm.path, "running", started=time.time(), boot=True
                    )
            elif action.op in (Op.STOP, Op.REMOVE) and phase == "done":
                self.store.set_vm(vap_id, action.vm.path, "stopped")

        return Executor(
            self.host, vap_id, self.timeouts, attic or self.state_dir / "attic", report=report
        )

    def _roll_back(self, vap_id: int, error: str) -> list[str]:
        """Stop whatever of a VAP exists, release its allocations, mark it failed."""
        vap = self.store.vap(vap_id)
        notes: list[str] = []
        if vap.state is not None:
            executor = self._executor(vap_id)
            executor.timeouts = dataclasses.replace(self.timeouts, stop=0.0)  # force: it never ran
            outcome = executor.run(stop_plan(vap.state), keep_going=True)
            notes = ([outcome.error] if outcome.error else []) + outcome.notes
        for row in self.store.vms(vap_id):
            try:
                self.host(row.host).destroy_domain(row.domain)
            except UtilityError as exc:
                notes.append(str(exc))
        held = [
            r[0]
            for r in self.store.read().execute("SELECT vlan FROM vlans WHERE vap_id=?", (vap_id,))
        ]
        for name in [f"{self.settings.prefix}-v{v}" for v in held] + [
            f"{self.settings.prefix}-x{vap_id}"
        ]:
            for host in self.store.hosts():
                try:
                    self.pool.get(host.name, host.uri).remove_network(name)
                except UtilityError as exc:
                    notes.append(str(exc))
        with self.store.transaction() as db:
            self.store.release(db, vap_id)
            self.store.set_vap(vap_id, status="failed", error=error, db=db)
        self.store.event(vap_id, "rollback", error)
        return notes

    # -- stop -----------------------------------------------------------------------------------

    def stop(
        self,
        caller: Caller,
        cvl_path: str,
        component: str | None = None,
        stop_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Stop a VAP in reverse boot order, or only `component` (a dotted path) and its parts.

        Returns:
            {"stopped": [paths], "warnings": [...]}; a warning names each running component
            that requires a stopped one.
        """
        path = str(Path(cvl_path).resolve())
        with self._lock_for(path):
            vap = self._active(caller, path)
            state = vap.state
            if state is None:
                raise NotFound(f"{path} has no recorded state")
            timeouts = (
                dataclasses.replace(self.timeouts, stop=stop_timeout)
                if stop_timeout is not None
                else self.timeouts
            )
            warnings: list[str] = []
            if component:
                target = state.without(component)
                gone = {vm.path for vm in state.vms} - {vm.path for vm in target.vms}
                if not gone:
                    raise NotFound(f"{path}: no running component {component!r}")
                for vm in target.vms:
                    for need in vm.needs:
                        if need in gone:
                            warnings.append(
                                f"warning: {vm.path} requires {need} "
                                f"({', '.join(vm.requires)}), which is being stopped"
                            )
            else:
                gone = {vm.path for vm in state.vms}
                self.store.set_vap(vap.id, status="stopping")
            executor = self._executor(vap.id)
            executor.timeouts = timeouts
            outcome = executor.run(stop_plan(state, component), keep_going=True)
            if component:
                self.store.set_vap(vap.id, state=state.without(component))
            else:
                with self.store.transaction() as db:
                    self.store.release(db, vap.id)
                    self.store.set_vap(vap.id, status="stopped", db=db, error=outcome.error)
            self.store.event(
                vap.id, "stop", f"{caller.name} stopped {component or 'all'} of {path}"
            )
            problems = ([outcome.error] if outcome.error else []) + outcome.notes
            return {"stopped": sorted(gone), "warnings": warnings, "problems": problems}


def _claim(cursor: sqlite3.Cursor, what: str) -> None:
    """A pool entry must move from free to held exactly once (another start may have won it)."""
    if cursor.rowcount != 1:
        raise Conflict(f"{what} was taken by a concurrent start; start again")


def final_evaluation(
    path: Path,
    overrides: Mapping[str, str],
    trust: TrustSession,
    checked: list[cvl_adapter.Fetched],
) -> ModelView:
    """The address-filled evaluation, on the imported texts the checks already saw (`checked`);
    anything it must fetch anew is checked like them."""
    fetched: list[cvl_adapter.Fetched] = []
    final = cvl_adapter.evaluate(path, overrides, fetched, replay=checked)
    problems = trust.cvl_problems(fetched)
    if problems:
        raise TrustRefused("; ".join(problems))
    return final


def _same_versions(first: ModelView, second: ModelView) -> None:
    """The address-filled evaluation must use the exact versions the checks saw."""

    def versions(m: ModelView) -> dict[str, str]:
        return {str(i.get("url")): str(i.get("version")) for i in m.imports}

    a, b = versions(first), versions(second)
    if a != b:
        changed = ", ".join(
            f"{u} {a.get(u)} -> {b.get(u)}" for u in sorted(set(a) | set(b)) if a.get(u) != b.get(u)
        )
        raise UtilityError(
            f"a repository published a new version during the start ({changed}); start again"
        )


def versions_of(model: ModelView) -> list[tuple[str, str]]:
    """(repository URL, version) of every import and component origin of a model."""
    pairs = [(c.origin.url, c.origin.version) for c in model.components.values() if c.origin]
    pairs += [(str(i["url"]), str(i.get("version"))) for i in model.imports if i.get("url")]
    return pairs
