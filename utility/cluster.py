"""The cluster manager: administration, start, stop, status and reconciliation.

It ties the pure parts (checks, placement, addressing, planner) to the edges (SQLite store,
libvirt hosts, qemu-img, guest channel). Callers are identified by a `Caller`; authorisation is
decided here (administrators manage hosts, pools and the blacklist and see every VAP; a user
sees and controls only their own VAPs), and turned into HTTP statuses only in `api`.

Start is crash-safe: allocations and the VAP record (status `starting`) are committed in one
transaction before any host is touched; domains and networks are named from the VAP id. If the
daemon dies mid-start, `reconcile` on the next start-up finds the `starting` VAP, destroys
whatever of it exists, and releases its allocations.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utility import addresses, allocation, cvl_adapter, disks
from utility.addresses import PUBLIC
from utility.allocation import Prepared, Settings
from utility.desired_state import VapState
from utility.errors import (
    CheckFailed,
    Conflict,
    Forbidden,
    NotFound,
    PlacementError,
    PoolExhausted,
    StartFailed,
    TrustRefused,
    UtilityError,
)
from utility.executor import Executor, RolledBack, Timeouts
from utility.libvirt_host import HostPool, LibvirtHost, probe_default_uri
from utility.model_view import ModelView, join_path
from utility.placement import HostRoom, place
from utility.planner import Action, Op, diff, start_plan, stop_plan
from utility.sizes import format_size
from utility.state import ACTIVE, HostRow, Store, VapRow
from utility.subscriptions import Subscriptions
from utility.trust_policy import TrustPolicy, TrustSession

FetchReport = Callable[[str, int, int], None]
"""`report(label, bytes done, bytes total)` while a disk's objects download."""

EMBEDDED_HOST = "local"
EMBEDDED_MAX_VMS = 16


@dataclass(frozen=True)
class Caller:
    """Who asks: a token's name and role ("admin" or "user")."""

    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class ClusterManager:
    """One cluster manager over a state directory.

    Args:
        state_dir: holds the SQLite database, the object cache and guest sockets.
        settings: naming, addressing base and placement policy.
        timeouts: readiness and clean-shutdown timeouts.
        default_uri: the embedded default host's URI; probed (`qemu:///system` or
            `test:///default`) when None.
        user_root: when set, users (not administrators) may only start CVL files under it; the
            daemon reads their CVL and writes disks next to it with its own privileges.
    """

    def __init__(
        self,
        state_dir: Path,
        settings: Settings | None = None,
        timeouts: Timeouts | None = None,
        default_uri: str | None = None,
        user_root: Path | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.user_root = user_root.resolve() if user_root else None
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = Store(state_dir)
        self.settings = settings or Settings()
        self.timeouts = timeouts or Timeouts()
        self.default_uri = default_uri
        self.pool = HostPool()
        self.cache_dir = state_dir / "cache"
        self.run_dir = state_dir / "run"
        self.run_dir.mkdir(exist_ok=True, mode=0o700)
        self._alloc_lock = threading.Lock()
        self._vap_locks: dict[str, threading.Lock] = {}
        self.unowned: list[dict[str, str]] = []
        self._secrets: dict[str, dict[str, str]] = {}  # in memory only, for automatic updates
        self.trust = TrustPolicy(state_dir)
        self.subscriptions = Subscriptions(state_dir)

    def close(self) -> None:
        """Close every host connection."""
        self.pool.close()

    # -- hosts ----------------------------------------------------------------------------------

    def host(self, name: str) -> LibvirtHost:
        """The libvirt wrapper of registered host `name`."""
        for row in self.store.hosts():
            if row.name == name:
                return self.pool.get(row.name, row.uri)
        raise NotFound(f"no host named {name}")

    def add_host(self, caller: Caller, name: str, uri: str, memory: int, max_vms: int) -> HostRow:
        """Register a host (administrators only); its libvirt connection is checked first."""
        _admin(caller, "add hosts")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise UtilityError(f"host name {name!r}: use letters, digits, '-' and '_'")
        if memory <= 0 or max_vms <= 0:
            raise UtilityError("host memory and max VMs must be positive")
        self.pool.get(name, uri).connection()
        row = HostRow(name, uri, memory, max_vms)
        self.store.add_host(row)
        return row

    def remove_host(self, caller: Caller, name: str) -> None:
        """Forget a host (administrators only); refused while it runs VMs."""
        _admin(caller, "remove hosts")
        self.store.remove_host(name)
        self.pool.drop(name)

    def hosts(self, caller: Caller) -> list[dict[str, Any]]:
        """Every host with its capacity and use."""
        usage = self.store.usage()
        return [
            {
                "name": h.name, "uri": h.uri, "memory": h.memory, "max_vms": h.max_vms,
                "used_memory": usage.get(h.name, (0, 0))[0], "vms": usage.get(h.name, (0, 0))[1],
                "embedded": h.embedded,
            }
            for h in self.store.hosts()
        ]

    def _ensure_default_host(self) -> list[str]:
        """With no host registered, register the embedded local host; say which in one line."""
        if self.store.hosts():
            return []
        uri, reason = (self.default_uri, f"embedded default host {self.default_uri}") \
            if self.default_uri else probe_default_uri()
        host = self.pool.get(EMBEDDED_HOST, uri)
        memory = host.memory()
        try:
            self.store.add_host(HostRow(EMBEDDED_HOST, uri, memory, EMBEDDED_MAX_VMS, True))
        except UtilityError:
            return []
        return [f"no host registered: using {reason}"]

    # -- pools and blacklist --------------------------------------------------------------------

    def add_vlans(self, caller: Caller, spec: str) -> int:
        """Add a VLAN range such as "100-163" (administrators only)."""
        _admin(caller, "change the VLAN pool")
        return self.store.add_vlans([int(v) for v in addresses.parse_range(spec)])

    def add_public_ips(self, caller: Caller, spec: str) -> int:
        """Add a public IP range such as "192.0.2.10-192.0.2.20" (administrators only)."""
        _admin(caller, "change the public IP pool")
        items = addresses.parse_range(spec)
        if any("." not in i for i in items):
            raise UtilityError(f"{spec!r} is not an IP address range")
        return self.store.add_public_ips(items)

    def pools(self, caller: Caller) -> dict[str, Any]:
        """Both pools (administrators only)."""
        _admin(caller, "see the pools")
        return self.store.pools()

    def blacklist_add(self, caller: Caller, url: str, version: str) -> None:
        """Blacklist a repository version or "all" (administrators only)."""
        _admin(caller, "change the blacklist")
        if version != "all" and not version.isdigit():
            raise UtilityError(f"blacklist version {version!r}: a version number or 'all'")
        self.store.blacklist_add(url, version)

    def blacklist_remove(self, caller: Caller, url: str, version: str) -> None:
        """Remove a blacklist entry (administrators only)."""
        _admin(caller, "change the blacklist")
        self.store.blacklist_remove(url, version)

    def set_trust(self, caller: Caller, url: str | None, require_signed: bool) -> None:
        """Set `require-signed` globally or for one repository URL (administrators only)."""
        _admin(caller, "change the trust policy")
        self.trust.set_require_signed(url, require_signed)

    def trust_key(self, caller: Caller, url: str | None, key: str) -> str:
        """Trust a signing key globally or for one URL (administrators only)."""
        _admin(caller, "change the trust policy")
        return self.trust.add_key(url, key)

    def subscribe(self, caller: Caller, repository: str, events_url: str,
                  auth: tuple[str, str] | None) -> dict[str, Any]:
        """Register for publish events of `repository` (administrators only)."""
        _admin(caller, "subscribe to repositories")
        return self.subscriptions.subscribe(repository, events_url, auth)

    def unsubscribe(self, caller: Caller, repository: str,
                    auth: tuple[str, str] | None) -> dict[str, Any]:
        """Stop publish events of `repository` (administrators only)."""
        _admin(caller, "unsubscribe from repositories")
        return self.subscriptions.unsubscribe(repository, auth)

    def blacklist(self, caller: Caller) -> list[dict[str, str]]:
        """The blacklist."""
        return [{"url": u, "version": v} for u, v in self.store.blacklist()]

    def violations(self, caller: Caller) -> list[dict[str, Any]]:
        """Active VAPs that run a blacklisted version (they are not stopped)."""
        _admin(caller, "list blacklist violations")
        banned = set(self.store.blacklist())
        found = []
        for vap in self.store.vaps(ACTIVE):
            for vm in vap.state.vms if vap.state else ():
                origin = vm.origin or {}
                url, version = origin.get("url", "").rstrip("/"), origin.get("version", "")
                if (url, version) in banned or (url, "all") in banned:
                    found.append({"cvl": vap.cvl_path, "owner": vap.owner, "component": vm.path,
                                  "url": url, "version": version})
        return found

    # -- start ----------------------------------------------------------------------------------

    def start(
        self, caller: Caller, cvl_path: str, secrets: Mapping[str, str] | None = None,
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
            trust = self.trust.session()
            fetched: list[cvl_adapter.Fetched] = []
            checked, problems = cvl_adapter.evaluate_for_checks(path, secrets, fetched)
            if checked is None:
                raise CheckFailed(problems)
            model = checked
            problems += trust.problems(_versions_of(model)) + trust.cvl_problems(fetched)
            prepared, more = allocation.prepare(model, path.parent, trust.release_for)
            problems += more + allocation.static_problems(model, self.store.blacklist())
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
                return self._bring_up(caller, vap_id, path, model, prepared, placement,
                                      addressing, bases, secrets, notes, trust, fetched)
            except BaseException as exc:
                self._roll_back(vap_id, f"start failed: {exc}")
                if isinstance(exc, UtilityError) and not isinstance(exc, CheckFailed):
                    raise StartFailed(
                        f"start of {path} failed and was rolled back (VAP stopped, addresses "
                        f"released, data disks kept): {exc}") from exc
                raise

    def _bring_up(self, caller: Caller, vap_id: int, path: Path, model: ModelView,
                  prepared: Mapping[str, Prepared], placement: Mapping[str, str],
                  addressing: addresses.Addressing, bases: Mapping[tuple[str, str], str],
                  secrets: Mapping[str, str], notes: list[str],
                  trust: TrustSession, fetched: list[cvl_adapter.Fetched]) -> dict[str, Any]:
        names = allocation.component_names(model)
        overrides = {**secrets, **addresses.overrides_for(model, addressing, names)}
        final = _final_evaluation(path, overrides, trust, fetched)
        _same_versions(model, final)
        state = allocation.build_state(
            vap_id=vap_id, cvl_path=path, model=final, prepared=prepared,
            addressing=addressing, placement=placement, bases=bases, secrets=secrets,
            settings=self.settings, run_dir=self.run_dir)
        self.store.set_vap(vap_id, state=state)
        outcome = self._executor(vap_id).run(start_plan(state))
        if not outcome.ok:
            raise UtilityError(outcome.error or "start failed")
        self.store.set_vap(vap_id, status="running")
        self.store.event(vap_id, "start", f"{caller.name} started {path}")
        return {"id": vap_id, "notes": notes, **self.vap_status(vap_id)}

    def _allocate(
        self, db: sqlite3.Connection, model: ModelView, prepared: Mapping[str, Prepared],
        vap_id: int | None, keep: addresses.Addressing | None = None,
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
        free_vlans = [r[0] for r in db.execute(
            "SELECT vlan FROM vlans WHERE vap_id IS NULL ORDER BY vlan")]
        free_ips = [r[0] for r in db.execute(
            "SELECT ip FROM public_ips WHERE vap_id IS NULL ORDER BY ip")]
        free_ips.sort(key=lambda ip: tuple(int(p) for p in ip.split(".")))
        macs = [r[0] for r in db.execute("SELECT address FROM addresses WHERE kind='mac'")]
        ips = [r[0] for r in db.execute("SELECT address FROM addresses WHERE kind='ip'")]
        addressing = addresses.Addressing({}, {})
        try:
            addressing = addresses.assign(model, free_vlans, free_ips, macs,
                                          self.settings.address_base, keep=keep, taken_ips=ips)
        except PoolExhausted as exc:
            problems.append(str(exc))
        if vap_id is None or problems:
            return placement, addressing, problems
        self._reserve(db, vap_id, placement, addressing, prepared, keep)
        return placement, addressing, []

    def _place(self, db: sqlite3.Connection, prepared: Mapping[str, Prepared]) -> dict[str, str]:
        """Hosts for the VMs in `prepared`, given what `db` says is in use (PlacementError)."""
        usage = self.store.usage(db)
        rooms = [HostRoom(h.name, h.memory, h.max_vms, *usage.get(h.name, (0, 0)))
                 for h in self.store.hosts()]
        return place(allocation.demands(prepared), rooms, self.settings.placement)

    def _reserve(
        self, db: sqlite3.Connection, vap_id: int, placement: Mapping[str, str],
        addressing: addresses.Addressing, prepared: Mapping[str, Prepared],
        keep: addresses.Addressing | None,
    ) -> None:
        """Record a VAP's allocations in `db`; what `keep` holds is already recorded."""
        kept_vlans = set(keep.vlans.values()) if keep else set()
        kept_ifaces = set(keep.interfaces.values()) if keep else set()
        for segment, vlan in addressing.vlans.items():
            if vlan in kept_vlans:
                continue
            _claim(db.execute(
                "UPDATE vlans SET vap_id=?, segment=? WHERE vlan=? AND vap_id IS NULL",
                (vap_id, segment, vlan)), f"VLAN {vlan}")
        for iface in addressing.interfaces.values():
            if iface in kept_ifaces:
                continue
            for address, kind in ((iface.mac, "mac"), (iface.ip, "ip")):
                db.execute("INSERT INTO addresses VALUES (?,?,?,?)",
                           (address, kind, vap_id, iface.path))
            if iface.segment == PUBLIC:
                _claim(db.execute(
                    "UPDATE public_ips SET vap_id=?, iface=? WHERE ip=? AND vap_id IS NULL",
                    (vap_id, iface.path, iface.ip)), f"public IP {iface.ip}")
        for vm_path, host in placement.items():
            db.execute("INSERT INTO vms (vap_id, path, host, domain, memory, state) "
                       "VALUES (?,?,?,?,?, 'pending')",
                       (vap_id, vm_path, host,
                        f"{self.settings.prefix}-{vap_id}-{vm_path or 'root'}",
                        prepared[vm_path].spec.memory))

    def _fetch_bases(self, prepared: Mapping[str, Prepared],
                     progress: FetchReport | None = None) -> dict[tuple[str, str], str]:
        """Local paths of each program disk's top image and of direct-boot kernels."""
        bases: dict[tuple[str, str], str] = {}
        data_targets = {p: {d for d, _ in prep.data_disks} for p, prep in prepared.items()}
        for vm_path, prep in prepared.items():
            for disk in prep.spec.disks:
                if disk.target not in data_targets[vm_path]:
                    label = f"{vm_path or '(root)'} {disk.source} ({prep.files.label})"
                    report = functools.partial(progress, label) if progress else None
                    bases[(vm_path, disk.target)] = str(
                        prep.files.local_path(disk.source, self.cache_dir, report))
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
                    self.store.set_vm(vap_id, action.vm.path, "running", started=time.time(),
                                      boot=True)
            elif action.op in (Op.STOP, Op.REMOVE) and phase == "done":
                self.store.set_vm(vap_id, action.vm.path, "stopped")

        return Executor(self.host, vap_id, self.timeouts,
                        attic or self.state_dir / "attic", report=report)

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
        held = [r[0] for r in self.store.read().execute(
            "SELECT vlan FROM vlans WHERE vap_id=?", (vap_id,))]
        for name in [f"{self.settings.prefix}-v{v}" for v in held] + \
                [f"{self.settings.prefix}-x{vap_id}"]:
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

    def stop(self, caller: Caller, cvl_path: str, component: str | None = None,
             stop_timeout: float | None = None) -> dict[str, Any]:
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
            timeouts = dataclasses.replace(self.timeouts, stop=stop_timeout) \
                if stop_timeout is not None else self.timeouts
            warnings: list[str] = []
            if component:
                target = state.without(component)
                gone = {vm.path for vm in state.vms} - {vm.path for vm in target.vms}
                if not gone:
                    raise NotFound(f"{path}: no running component {component!r}")
                for vm in target.vms:
                    for need in vm.needs:
                        if need in gone:
                            warnings.append(f"warning: {vm.path} requires {need} "
                                            f"({', '.join(vm.requires)}), which is being stopped")
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
                    self.store.set_vap(vap.id, status="stopped", db=db,
                                       error=outcome.error)
            self.store.event(vap.id, "stop",
                             f"{caller.name} stopped {component or 'all'} of {path}")
            problems = ([outcome.error] if outcome.error else []) + outcome.notes
            return {"stopped": sorted(gone), "warnings": warnings, "problems": problems}

    # -- update (issue 5: the diff between two states) -----------------------------------------

    def update(
        self, caller: Caller, cvl_path: str, component: str | None = None, *,
        dry_run: bool = False, secrets: Mapping[str, str] | None = None,
        trigger: str = "user", progress: FetchReport | None = None,
    ) -> dict[str, Any]:
        """Re-evaluate a running VAP's CVL, diff against what runs, print and apply the plan.

        Existing components keep their host, MACs, IPs and VLANs; new ones are allocated like a
        start; removed ones are stopped and their directory moved to `<CVL dir>/.attic/`.
        Dependents are not restarted when a provider is updated (no cascade): a provider's
        update is a short outage they must tolerate, and a dependent whose own parameters change
        gets them resent (after the provider is back). `dry_run` changes nothing.

        Returns:
            {"plan": [...], "lines": [...], "applied": bool, "error": str | None}
        """
        path = Path(cvl_path).resolve()
        self._may_use(caller, path)
        secrets = {**self._secrets.get(str(path), {}), **dict(secrets or {})}
        with self._lock_for(str(path)):
            vap = self._active(caller, str(path))
            current = vap.state
            if current is None:
                raise NotFound(f"{path} has no recorded state")
            lost = sorted(self.store.secret_keys(vap.id) - {k for k, v in secrets.items() if v})
            if lost and trigger != "user":
                return self._needs_user(vap.id, path, trigger, lost)
            trust = self.trust.session()
            fetched: list[cvl_adapter.Fetched] = []
            checked, problems = cvl_adapter.evaluate_for_checks(path, secrets, fetched)
            if checked is None:
                raise CheckFailed(problems)
            model = checked
            problems += trust.problems(_versions_of(model)) + trust.cvl_problems(fetched)
            prepared, more = allocation.prepare(model, path.parent, trust.release_for)
            problems += more + allocation.static_problems(model, self.store.blacklist())
            rows = self.store.vms(vap.id)
            keep = self._held_addressing(vap.id, model, current, rows)
            recorded = {row.path for row in rows}
            fresh = {p: prep for p, prep in prepared.items()
                     if current.vm(p) is None and p not in recorded}
            # 1. what the pools would give (a short write transaction, nothing reserved yet)
            with self._alloc_lock, self.store.transaction() as db:
                placed, addressing, more = self._allocate(db, model, fresh, None, keep)
            problems += more
            if problems:
                raise CheckFailed(problems)
            # 2. downloads and the address-filled evaluation, holding no state lock
            placement = {**{vm.path: vm.host for vm in current.vms if vm.path in prepared},
                         **placed}
            for row in rows:  # VMs stopped on request (not in the current state) keep their host
                placement.setdefault(row.path, row.host)
            bases = self._fetch_bases(prepared, progress)
            names = allocation.component_names(model)
            overrides = {**secrets, **addresses.overrides_for(model, addressing, names)}
            final = _final_evaluation(path, overrides, trust, fetched)
            desired = allocation.build_state(
                vap_id=vap.id, cvl_path=path, model=final, prepared=prepared,
                addressing=addressing, placement=placement, bases=bases, secrets=secrets,
                settings=self.settings, run_dir=self.run_dir)
            if component:
                desired = _merge(current, desired, component)
            plan = diff(current, desired, vanished=Op.REMOVE)
            retried = _retried_failures(plan, self.store.failed_versions(str(path)))
            skip = None
            if retried and trigger != "user":
                skip = (f"skipped: {', '.join(retried)} failed before; waiting for a newer "
                        "version (a manual cui update can force it)")
            proceed = bool(plan) and not dry_run and skip is None
            # 3. reserve exactly what was planned with, or refuse if a concurrent start took it
            if proceed:
                taken = Conflict(f"{path}: another VAP took addresses or host room while "
                                 "this update was prepared; run it again")
                with self._alloc_lock, self.store.transaction() as db:
                    try:
                        if fresh and self._place(db, fresh) != placed:
                            raise taken
                        self._reserve(db, vap.id, placed, addressing, fresh, keep)
                    except (PlacementError, sqlite3.IntegrityError):
                        raise taken from None
                    self.store.set_vap(vap.id, status="updating", db=db)
            if not proceed and not dry_run:
                self._settle(vap.id, current, {vm.path for vm in model.vms()}, set(), path)
                if trigger == "user":  # the user's values are what automatic updates use next
                    self._secrets[str(path)] = secrets
                    self.store.set_secret_keys(vap.id, [k for k, v in secrets.items() if v])
                    if (vap.error or "").startswith("waiting for its user"):
                        self.store.set_vap(vap.id, status="running")
            if not proceed:
                if skip:
                    self.record_history(str(path), trigger, plan.lines(),
                                        _version_changes(plan), skip)
                return {"plan": plan.to_json(), "lines": plan.lines(), "applied": False,
                        "error": skip}
            self._secrets[str(path)] = secrets
            self.store.set_secret_keys(vap.id, [k for k, v in secrets.items() if v])
            outcome = self._executor(vap.id, path.parent / ".attic").run(plan)
            after = _state_after(current, desired, plan, set(outcome.done))
            removed = {a.vm.path for a in plan.actions
                       if a.op is Op.REMOVE and a.vm is not None and a.key in outcome.done}
            self._settle(vap.id, after, {vm.path for vm in model.vms()}, removed, path)
            self.store.set_vap(vap.id, status="running", state=after, error=outcome.error)
            if isinstance(outcome.exception, RolledBack):
                failed = next(a for a in plan.actions if a.key == outcome.failed)
                origin = (failed.vm.origin if failed.vm else None) or {}
                self.store.mark_failed(str(path), str(origin.get("url")),
                                       str(origin.get("version")))
            self.record_history(str(path), trigger, plan.lines(), _version_changes(plan),
                                f"failed: {outcome.error}" if outcome.error else "applied")
            return {"plan": plan.to_json(), "lines": plan.lines(), "applied": True,
                    "error": outcome.error}

    def _needs_user(self, vap_id: int, path: Path, trigger: str,
                    lost: list[str]) -> dict[str, Any]:
        """An automatic update that cannot run: the VAP's sensitive values were held only in
        memory and the cluster manager restarted since. Say so in history and status; the
        user's next `cui update` (their agent supplies the values) clears it."""
        message = (f"waiting for its user: the sensitive values of {', '.join(lost)} are kept "
                   "only in memory and were lost when the cluster manager restarted; run "
                   f"`cui update {path}` to supply them")
        self.record_history(str(path), trigger, [], {}, message)
        self.store.set_vap(vap_id, error=message)
        return {"plan": [], "lines": [], "applied": False, "error": message}

    def record_history(self, cvl_path: str, trigger: str, actions: list[str],
                       versions: dict[str, list[str | None]], result: str) -> None:
        """Append to the update history (`cui history`)."""
        self.store.add_history(str(Path(cvl_path).resolve()), trigger, actions, versions, result)

    def history(self, caller: Caller, cvl_path: str | None = None) -> list[dict[str, Any]]:
        """The update history of the caller's VAPs (every VAP for administrators)."""
        path = str(Path(cvl_path).resolve()) if cvl_path else None
        mine = {v.cvl_path for v in self.store.vaps() if caller.admin or v.owner == caller.name}
        return [h for h in self.store.history(path) if h["cvl_path"] in mine]

    def _settle(self, vap_id: int, state: VapState, members: set[str],
                removed: set[str], cvl_path: Path) -> None:
        """Release what a VAP no longer uses after an update; drop stale VM records.

        The rule: a VM running after the update holds exactly the MACs and IPs its state shows;
        a VM stopped on request (`cui stop FILE COMP`) that the CVL still has (`members`) keeps
        its record, host, MACs and IPs, and the update that restarts it reuses them; every other
        address, VM record and unused VLAN of the VAP is released, including those of a
        component removed from the CVL while it was stopped, whose directory (data disks
        included) then goes to the attic like any removed component's.
        """
        running = {vm.path for vm in state.vms}
        in_use = {join_path(vm.path, i.name): {i.mac, i.ip} for vm in state.vms
                  for i in vm.interfaces}
        kept_stopped = (members - removed) - running
        with self.store.transaction() as db:
            for address, iface in db.execute("SELECT address, path FROM addresses WHERE vap_id=?",
                                             (vap_id,)).fetchall():
                vm_path = iface.rpartition(".")[0]
                held = address in in_use.get(iface, ()) if vm_path in running \
                    else vm_path in kept_stopped
                if not held:
                    db.execute("DELETE FROM addresses WHERE address=?", (address,))
                    db.execute("UPDATE public_ips SET vap_id=NULL, iface=NULL WHERE ip=?",
                               (address,))
            used_vlans = set(state.vlans.values())
            for (vlan,) in db.execute("SELECT vlan FROM vlans WHERE vap_id=?",
                                      (vap_id,)).fetchall():
                if vlan not in used_vlans:
                    db.execute("UPDATE vlans SET vap_id=NULL, segment=NULL WHERE vlan=?", (vlan,))
            stale = []
            for (vm_path,) in db.execute("SELECT path FROM vms WHERE vap_id=?",
                                         (vap_id,)).fetchall():
                if vm_path not in running | kept_stopped:
                    db.execute("DELETE FROM vms WHERE vap_id=? AND path=?", (vap_id, vm_path))
                    if vm_path not in members and vm_path not in removed:
                        stale.append(vm_path)
        for vm_path in stale:
            moved = disks.move_directory_to_attic(cvl_path.parent / (vm_path or "root"),
                                                  vm_path or "root", cvl_path.parent / ".attic")
            self.store.event(vap_id, "remove", f"{vm_path} (stopped) is no longer in the CVL: "
                                               f"record released, directory to {moved}")

    def _held_addressing(self, vap_id: int, model: ModelView, current: VapState,
                         rows: list[Any]) -> addresses.Addressing:
        """What the VAP holds: the running VMs' addresses, plus those of VMs stopped on request
        whose interface is still on the same segment (so a restart keeps its MAC and IP)."""
        keep = _addressing_of(current)
        stopped = {r.path for r in rows if current.vm(r.path) is None}
        if not stopped:
            return keep
        held: dict[str, dict[str, str]] = {}
        for address, kind, holder, iface_path in self.store.all_addresses():
            if holder == vap_id:
                held.setdefault(iface_path, {})[kind] = address
        public = {r["ip"] for r in self.store.pools()["public_ips"] if r["vap_id"] == vap_id}
        interfaces = dict(keep.interfaces)
        for vm in model.vms():
            if vm.path not in stopped:
                continue
            for iface in model.interfaces(vm.path):
                got = held.get(iface.path, {})
                mac, ip = got.get("mac"), got.get("ip")
                if mac is None or ip is None:
                    continue
                segment = addresses.segment_of(model, iface.path)
                if segment == addresses.PUBLIC:
                    ok, net = ip in public, ipaddress.IPv4Network(f"{ip}/24", strict=False)
                else:
                    vlan = keep.vlans.get(segment)
                    net = addresses.subnet_for_vlan(vlan, self.settings.address_base) \
                        if vlan is not None else ipaddress.IPv4Network("0.0.0.0/32")
                    ok = vlan is not None and ipaddress.IPv4Address(ip) in net
                if ok:
                    interfaces[iface.path] = addresses.InterfaceAddress(
                        path=iface.path, segment=segment, mac=mac, ip=ip,
                        subnet=str(net.network_address), netmask=addresses.NETMASK)
        return addresses.Addressing(vlans=dict(keep.vlans), interfaces=interfaces)

    # -- status ---------------------------------------------------------------------------------

    def status(self, caller: Caller, cvl_path: str | None = None) -> list[dict[str, Any]]:
        """Status of the caller's VAPs (all of them for administrators), or of one CVL file."""
        if cvl_path is not None:
            path = str(Path(cvl_path).resolve())
            vap = self.store.vap_by_path(path)
            if vap is None:
                raise NotFound(f"{path} was never started")
            _owner(caller, vap, "see")
            return [self.vap_status(vap.id)]
        return [self.vap_status(v.id) for v in self.store.vaps()
                if caller.admin or v.owner == caller.name]

    def vap_status(self, vap_id: int) -> dict[str, Any]:
        """One VAP's status: per component path, type, version, host, interfaces, state, uptime."""
        vap = self.store.vap(vap_id)
        rows = {r.path: r for r in self.store.vms(vap_id)}
        now = time.time()
        components = []
        state = vap.state
        for vm in state.vms if state else ():
            row = rows.get(vm.path)
            running = row is not None and row.state == "running"
            components.append({
                "path": vm.path, "type": vm.type,
                "version": (vm.origin or {}).get("version"),
                "repository": (vm.origin or {}).get("url"),
                "host": vm.host, "domain": vm.domain,
                "memory": vm.memory,
                "interfaces": [{"name": i.name, "ip": i.ip, "mac": i.mac, "network": i.network,
                                "netmask": i.netmask} for i in vm.interfaces],
                "state": row.state if row else "stopped",
                "boot_seq": row.boot_seq if row else None,
                "uptime": round(now - row.started, 3) if running and row and row.started else None,
                "started": row.started if running and row else None,
                "params": {k: list(v) for k, v in vm.masked().params},
            })
        for path, row in rows.items():
            if state is None or state.vm(path) is None:
                components.append({"path": path, "host": row.host, "domain": row.domain,
                                   "state": row.state, "boot_seq": row.boot_seq,
                                   "interfaces": [], "uptime": None})
        boot_order = [r.path for r in sorted(rows.values(), key=lambda r: r.boot_seq or 0)
                      if r.boot_seq is not None]
        return {
            "id": vap.id, "cvl": vap.cvl_path, "owner": vap.owner, "status": vap.status,
            "error": vap.error, "appliance": state.appliance if state else None,
            "vlans": dict(state.vlans) if state and vap.status in ACTIVE else {},
            "networks": [dataclasses.asdict(n) for n in state.networks] if state else [],
            "boot_order": boot_order, "components": components,
        }

    # -- reconciliation -------------------------------------------------------------------------

    def reconcile(self) -> dict[str, Any]:
        """Bring the recorded state in line with what the hosts report (run at daemon start).

        - a VAP caught mid-start/stop/update is rolled back to stopped, allocations released;
        - a running VAP's VM whose domain is gone or not running is marked `dead`;
        - a domain on a host that no active VAP owns is reported, never killed.
        """
        report: dict[str, Any] = {"rolled_back": [], "dead": [], "unowned": [], "unreachable": []}
        for vap in self.store.vaps(("starting", "stopping", "updating")):
            self._roll_back(vap.id, f"interrupted: the cluster manager stopped during "
                                    f"{vap.status}; rolled back")
            report["rolled_back"].append(vap.cvl_path)
        owned: set[tuple[str, str]] = set()
        for vap in self.store.vaps(("running",)):
            for row in self.store.vms(vap.id):
                owned.add((row.host, row.domain))
                if row.state != "running":
                    continue
                try:
                    info = self.host(row.host).domain(row.domain)
                except UtilityError:
                    continue
                if info is None or not info.running:
                    self.store.set_vm(vap.id, row.path, "dead")
                    self.store.event(vap.id, "dead", f"{row.path}: domain {row.domain} on "
                                                     f"{row.host} is gone")
                    report["dead"].append(f"{vap.cvl_path}:{row.path}")
        for host in self.store.hosts():
            try:
                domains = self.pool.get(host.name, host.uri).domains()
            except UtilityError as exc:
                report["unreachable"].append(str(exc))
                continue
            for info in domains:
                if (host.name, info.name) not in owned:
                    report["unowned"].append({"host": host.name, "domain": info.name})
        self.unowned = report["unowned"]
        return report

    # -- helpers --------------------------------------------------------------------------------

    def _may_use(self, caller: Caller, path: Path) -> None:
        """Users may only run CVL files under the configured user root (if any)."""
        if caller.admin or self.user_root is None or path.is_relative_to(self.user_root):
            return
        raise Forbidden(f"{caller.name} may only start CVL files under {self.user_root}")

    def _lock_for(self, path: str) -> threading.Lock:
        with self._alloc_lock:
            return self._vap_locks.setdefault(path, threading.Lock())

    def _active(self, caller: Caller, path: str) -> VapRow:
        vap = self.store.vap_by_path(path)
        if vap is None or vap.status not in ACTIVE:
            raise NotFound(f"{path} is not running")
        _owner(caller, vap, "control")
        return vap


def _claim(cursor: sqlite3.Cursor, what: str) -> None:
    """A pool entry must move from free to held exactly once (another start may have won it)."""
    if cursor.rowcount != 1:
        raise Conflict(f"{what} was taken by a concurrent start; start again")


def _admin(caller: Caller, what: str) -> None:
    if not caller.admin:
        raise Forbidden(f"only administrators may {what} ({caller.name} is a user)")


def _owner(caller: Caller, vap: VapRow, what: str) -> None:
    if not caller.admin and vap.owner != caller.name:
        raise Forbidden(f"{caller.name} may not {what} {vap.cvl_path}: it belongs to another user")


def _final_evaluation(path: Path, overrides: Mapping[str, str], trust: TrustSession,
                      checked: list[cvl_adapter.Fetched]) -> ModelView:
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
        changed = ", ".join(f"{u} {a.get(u)} -> {b.get(u)}" for u in sorted(set(a) | set(b))
                            if a.get(u) != b.get(u))
        raise UtilityError(f"a repository published a new version during the start ({changed}); "
                           "start again")


def _addressing_of(state: VapState) -> addresses.Addressing:
    """The addresses a running VAP holds, in the form `addresses.assign(keep=...)` takes."""
    interfaces = {}
    for vm in state.vms:
        for i in vm.interfaces:
            path = f"{vm.path}.{i.name}" if vm.path else i.name
            net = ipaddress.IPv4Network(f"{i.ip}/{i.netmask}", strict=False)
            interfaces[path] = addresses.InterfaceAddress(
                path=path, segment=i.segment, mac=i.mac, ip=i.ip,
                subnet=str(net.network_address), netmask=i.netmask)
    return addresses.Addressing(vlans=dict(state.vlans), interfaces=interfaces)


def _merge(current: VapState, desired: VapState, component: str) -> VapState:
    """`desired` for the VMs at or under `component`, `current` for every other VM."""
    def inside(p: str) -> bool:
        return p == component or p.startswith(component + ".")

    vms = [vm for vm in current.vms if not inside(vm.path)]
    vms += [vm for vm in desired.vms if inside(vm.path)]
    if not any(inside(vm.path) for vm in [*current.vms, *desired.vms]):
        raise NotFound(f"no component {component!r} in {current.cvl_path}")
    return _with_networks(dataclasses.replace(current, vms=tuple(sorted(vms, key=_path_key))),
                          [*current.networks, *desired.networks])


def _path_key(vm: Any) -> str:
    return str(vm.path)


def _with_networks(state: VapState, candidates: list[Any]) -> VapState:
    """`state` with exactly the networks its VMs use, taken from `candidates`."""
    used = {(i.network, vm.host) for vm in state.vms for i in vm.interfaces}
    nets = {(n.name, n.host): n for n in candidates if (n.name, n.host) in used}
    return dataclasses.replace(state, networks=tuple(nets[k] for k in sorted(nets)))


def _versions_of(model: ModelView) -> list[tuple[str, str]]:
    """(repository URL, version) of every import and component origin of a model."""
    pairs = [(c.origin.url, c.origin.version) for c in model.components.values() if c.origin]
    pairs += [(str(i["url"]), str(i.get("version"))) for i in model.imports if i.get("url")]
    return pairs


def _retried_failures(plan: Any, failed: set[tuple[str, str]]) -> list[str]:
    """Versions in `plan` that already failed to become ready in this VAP."""
    found = []
    for a in plan.actions:
        if a.op is Op.UPDATE and a.vm is not None:
            origin = a.vm.origin or {}
            key = (str(origin.get("url")), str(origin.get("version")))
            if key in failed:
                found.append(f"{a.vm.path} v{key[1]}")
    return found


def _version_changes(plan: Any) -> dict[str, list[str | None]]:
    """component path -> [from version, to version] for every version change in a plan."""
    changes: dict[str, list[str | None]] = {}
    for a in plan.actions:
        if a.vm is None:
            continue
        new = (a.vm.origin or {}).get("version")
        if a.op is Op.UPDATE and a.old is not None:
            old = (a.old.origin or {}).get("version")
            if old != new:
                changes[a.vm.path] = [old, new]
        elif a.op is Op.START:
            changes[a.vm.path] = [None, new]
        elif a.op is Op.REMOVE:
            changes[a.vm.path] = [new, None]
    return changes


def _state_after(current: VapState, desired: VapState, plan: Any, done: set[str]) -> VapState:
    """What runs after a (possibly partly failed) plan: current, changed by completed actions."""
    vms = {vm.path: vm for vm in current.vms}
    for action in plan.actions:
        if action.vm is None or action.key not in done:
            continue
        if action.op in (Op.START, Op.UPDATE, Op.RESEND):
            vms[action.vm.path] = action.vm
        elif action.op in (Op.STOP, Op.REMOVE):
            vms.pop(action.vm.path, None)
    segments = {i.segment for vm in vms.values() for i in vm.interfaces}
    vlans = {seg: tag for seg, tag in {**dict(current.vlans), **dict(desired.vlans)}.items()
             if seg in segments or seg in desired.vlans}
    base = dataclasses.replace(desired, vms=tuple(vms[p] for p in sorted(vms)), vlans=vlans)
    return _with_networks(base, [*current.networks, *desired.networks])


def describe_host(row: HostRow) -> str:
    """One line about a host for people."""
    return f"{row.name} {row.uri} {format_size(row.memory)} max {row.max_vms} VMs"


__all__ = ["Caller", "ClusterManager", "VapState"]
