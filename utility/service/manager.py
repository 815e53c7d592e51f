"""The cluster manager: a small facade over its services, and the one place that authorises.

Each public method asks the `Policy` first, then hands the work to one service:
`Administration` (pools, blacklist, tokens), `Hosts`, `Lifecycle` (start, stop, rollback,
reconciliation), `Updating` (update, history) and `StatusView`. Start, stop, update and rollback
all go through `Applier.apply(current, desired)`; start and update share the `Pipeline` (check,
fetch, the address-filled evaluation) and the `Allocator` (propose, then reserve exactly). The
constructor is the composition root: every service gets its dependencies explicitly and can be
built alone (tests/unit/test_utility_services.py). Errors become HTTP statuses in
`utility.web.api` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from utility.adapters.allocations import Allocations
from utility.adapters.bundles import BundleStore, read_bundle
from utility.adapters.event_guard import EventRules, accept_event
from utility.adapters.executor import Timeouts
from utility.adapters.libvirt_host import Fault, HostPool, LibvirtHost, never_cut_off
from utility.adapters.migration import LibvirtMigrator, Migrator
from utility.adapters.store import HostRow, Store, VapRow, short_name
from utility.adapters.subscriptions import Subscriptions
from utility.adapters.trust_policy import TrustPolicy
from utility.core import overlay
from utility.core.addresses import parse_range
from utility.core.backups import DEFAULT_KEEP
from utility.core.bundle import Bundle, check_vap_name, default_name
from utility.core.desired_state import VapState
from utility.core.moves import DEFAULT_GRACE
from utility.core.validation import check_public_ips
from utility.errors import NotFound
from utility.service.administration import Administration
from utility.service.allocator import Allocator
from utility.service.apply import Applier
from utility.service.backing_up import Backups
from utility.service.desired import Settings
from utility.service.failover import HostMonitor
from utility.service.hosts import EMBEDDED_HOST, Hosts
from utility.service.lifecycle import Lifecycle, Parts
from utility.service.locks import VapLocks
from utility.service.moving import Mover
from utility.service.pipeline import FetchReport, Pipeline
from utility.service.policy import (
    RESERVED_NAMES,
    Caller,
    Policy,
    never_started,
    no_vap_id,
    not_running,
)
from utility.service.recovery import Recovery
from utility.service.secrets import HeldSecrets
from utility.service.status import StatusView
from utility.service.updating import Updating
from utility.service.watchdog import Backoff, Watchdog

# Search permission for others, no listing: qemu (user libvirt-qemu) must open the backing files
# in `cache/`; everything else in the directory (database, run/, secrets) is 0600/0700.
STATE_DIR_MODE = 0o711


class ClusterManager:
    """One cluster manager over a state directory.

    Args:
        state_dir: holds the SQLite database, the object cache and guest sockets.
        settings: naming, addressing base and placement policy.
        timeouts: readiness and clean-shutdown timeouts.
        default_uri: the embedded default host's URI; probed (`qemu:///system` or
            `test:///default`) when None.
        boot_order: "overlapped" (default) or "strict": how the VMs of a start or update boot
            (`utility.adapters.executor`).
        host_fault: says whether a host is cut off (tests make a host unreachable with it).
        clock: monotonic seconds for restart backoff and host silence (tests pass their own).
        backoff: restart pacing for crashed VMs.
        host_grace: seconds a host may be silent before it is failed (`failover`).
        migrator: live migration for moves (tests pass a stand-in: the test driver cannot).
    """

    def __init__(
        self,
        state_dir: Path,
        settings: Settings | None = None,
        timeouts: Timeouts | None = None,
        default_uri: str | None = None,
        boot_order: str = "overlapped",
        *,
        host_fault: Fault = never_cut_off,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        host_grace: float = DEFAULT_GRACE,
        migrator: Migrator | None = None,
        backup_keep: int = DEFAULT_KEEP,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
        cache_dir, run_dir = state_dir / "cache", state_dir / "run"
        cache_dir.mkdir(exist_ok=True, mode=0o755)  # published objects only, no secrets
        run_dir.mkdir(exist_ok=True, mode=0o700)
        settings = settings or Settings()
        self.settings = settings
        self.store = Store(state_dir)
        self.trust = TrustPolicy(state_dir)
        self.subscriptions = Subscriptions(state_dir)
        self.policy = Policy()
        self.hosts_service = Hosts(self.store, HostPool(host_fault), default_uri)
        allocations = Allocations(self.store)
        self.parts = Parts(
            store=self.store,
            allocations=allocations,
            allocator=Allocator(self.store, allocations, settings),
            pipeline=Pipeline(self.store, self.trust, settings, cache_dir, run_dir, state_dir),
            applier=Applier(
                self.store,
                self.hosts_service.host,
                timeouts or Timeouts(),
                state_dir / "attic",
                boot_order=boot_order,
            ),
            hosts=self.hosts_service,
            secrets=HeldSecrets(self.store),
            locks=VapLocks(),
            status=StatusView(self.store),
            settings=settings,
            bundles=BundleStore(state_dir, self.store),
        )
        self.admin = Administration(self.store, self.hosts_service, self.trust, self.subscriptions)
        self.lifecycle = Lifecycle(self.parts)
        self.updating = Updating(self.parts, self.lifecycle)
        self.recovery = Recovery(self.parts, self.lifecycle)
        self.watchdog = Watchdog(self.parts, self.lifecycle, clock, backoff)
        self.hosts_service.pool.on_stopped = self.watchdog.domain_stopped
        self.monitor = HostMonitor(self.parts, host_grace, clock)
        self.watchdog.monitor = self.monitor
        self.mover = Mover(self.parts, migrator or LibvirtMigrator())
        self.backups = Backups(self.parts, backup_keep)
        self.updating.after_update = lambda vap_id: self.backups.back_up(vap_id, "update")
        self.unowned: list[dict[str, str]] = []

    def close(self) -> None:
        """Close every host connection."""
        self.hosts_service.close()

    def host(self, name: str) -> LibvirtHost:
        """The libvirt wrapper of registered host `name` (for the daemon and tests)."""
        return self.hosts_service.host(name)

    def authenticate(self, token: str) -> Caller | None:
        """The caller a bearer token stands for, or None."""
        who = self.store.who(token)
        if who is None or who[0] in RESERVED_NAMES:  # an old database's token named `local`
            return None
        return Caller(*who)

    # -- VAPs -----------------------------------------------------------------------------------

    def vap_name(
        self,
        caller: Caller,
        ref: str | Path,
        hidden: Callable[[str], NotFound] = never_started,
    ) -> str:
        """The VAP (`owner/short name`) a caller means by `ref`: `NAME` (the caller's own),
        `OWNER/NAME` (any owner's for administrators; a user may only name their own), or the
        path of a CVL file (its default name, the file's stem: nothing is read).

        Raises:
            NotFound: a user naming another owner's VAP: `hidden(ref)`, the very refusal a
                missing VAP of theirs gives.
            BundleError: a malformed name.
        """
        text = str(ref)
        if text.startswith("/"):
            return f"{caller.name}/{default_name(PurePosixPath(text).name)}"
        owner, slash, short = text.rpartition("/")
        if not slash:
            owner = caller.name
        check_vap_name(short)
        if not owner or "\0" in owner or (owner != caller.name and not caller.admin):
            raise hidden(text)
        return f"{owner}/{short}"

    def start(
        self,
        caller: Caller,
        source: Bundle | str | Path,
        secrets: Mapping[str, str] | None = None,
        progress: FetchReport | None = None,
        restart: str = "always",
        *,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Start VAP `name` (default: the CVL file's stem) of `caller` from a CVL bundle; `restart`
        is its restart policy for crashed VMs (`always` or `never`).

        `source` is the bundle a client submitted; a path (in-process callers only: the HTTP API
        takes bundles) is read into a bundle here, as `cui start` would. `secrets` are sensitive
        parameter values (override keys like `l.rootpw`), held only in memory and passed only to
        the VMs; `progress` is told `(label, bytes done, bytes total)` while disk objects
        download.
        """
        bundle = source if isinstance(source, Bundle) else read_bundle(Path(source))
        short = check_vap_name(name) if name is not None else default_name(bundle.root)
        qualified = f"{caller.name}/{short}"
        started = self.lifecycle.start(
            caller.name,
            qualified,
            bundle,
            dict(secrets or {}),
            progress,
            restart,
            local_files=caller.admin,
        )
        self.watchdog.forget(int(started["id"]))  # a stopped VAP started again: a new run
        return started

    def stop(
        self,
        caller: Caller,
        ref: str | Path,
        component: str | None = None,
        stop_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Stop a VAP, or only `component` (a dotted path) and what lies under it."""
        name = self.vap_name(caller, ref, not_running)
        self.policy.require_owner(caller, self.store.vap_by_name(name), not_running(str(ref)))
        return self.lifecycle.stop(caller.name, name, component, stop_timeout)

    def update(
        self,
        caller: Caller,
        ref: str | Path,
        component: str | None = None,
        *,
        bundle: Bundle | None = None,
        dry_run: bool = False,
        secrets: Mapping[str, str] | None = None,
        trigger: str = "user",
        progress: FetchReport | None = None,
    ) -> dict[str, Any]:
        """Re-evaluate a running VAP's CVL (a newly submitted `bundle`, else the one it runs)
        and apply the difference (see `Updating.update`). A `Path` as `ref` (in-process callers
        only: the HTTP API passes names as strings) is read as the new bundle."""
        name = self.vap_name(caller, ref, not_running)
        vap = self.store.vap_by_name(name)
        self.policy.require_owner(caller, vap, not_running(str(ref)))
        if isinstance(ref, Path) and bundle is None:  # in-process callers: the file as it is now
            bundle = read_bundle(ref)
        return self.updating.update(
            name,
            component,
            bundle=bundle,
            dry_run=dry_run,
            secrets=secrets,
            trigger=trigger,
            progress=progress,
        )

    def show(self, caller: Caller, ref: str | Path) -> dict[str, Any]:
        """The CVL bundle VAP `ref` runs (its newest version), every file's text where it is
        text, and the list of its bundle versions."""
        name = self.vap_name(caller, ref)
        vap = self.policy.require_owner(
            caller, self.store.vap_by_name(name), never_started(str(ref))
        )
        bundle = self.lifecycle.current_bundle(vap)
        described = bundle.describe()
        texts = {}
        for path in bundle.manifest:
            if path.endswith(".cvl"):
                try:
                    texts[path] = bundle.read(path).decode("utf-8")
                except UnicodeDecodeError:
                    continue
        return {
            "name": short_name(vap.name),
            "owner": vap.owner,
            "status": vap.status,
            "versions": self.store.vap_bundles(vap.id),
            **described,
            "texts": texts,
        }

    def reconcile(self) -> dict[str, Any]:
        """Bring the records in line with the hosts (the daemon, at start-up)."""
        report = self.lifecycle.reconcile(self.recovery.recover)
        self.unowned = report["unowned"]
        return report

    def check(self) -> dict[str, list[str]]:
        """One watchdog round: crashed VMs marked and restarted, pending stops finished."""
        return self.watchdog.check()

    def unowned_domains(self, caller: Caller) -> list[dict[str, str]]:
        """Domains no VAP owns, as the last reconciliation found them."""
        self.policy.require_read(caller, "reconciliation reports")
        return self.unowned

    def status(self, caller: Caller, ref: str | Path | None = None) -> list[dict[str, Any]]:
        """Status of the caller's VAPs (all of them for administrators), or of one VAP."""
        if ref is None:  # a constant number of queries, however many VAPs there are
            vaps = self.policy.visible(caller, self.store.vaps())
            policies = self.store.restart_policies()
            restarts = self.watchdog.restarts_by_vap()
            health, restores = self.store.host_health(), self.store.restores()
            out = self.parts.status.statuses(vaps)
            for vap_row, status in zip(vaps, out, strict=True):
                self._backups(vap_row, status)
                self._decorate(
                    status, policies.get(status["id"], "always"), restarts, health, restores
                )
            return out
        name = self.vap_name(caller, ref)
        hidden = never_started(str(ref))
        vap = self.policy.require_owner(caller, self.store.vap_by_name(name), hidden)
        return [self._status(vap.id)]

    def _status(self, vap_id: int) -> dict[str, Any]:
        """A VAP's status with its restart policy, each component's recent restarts, its host's
        health when not `up`, and where a VM restored after its host failed got its data disks
        from."""
        status = self.parts.status.vap_status(vap_id)
        restarts = {vap_id: self.watchdog.restarts(vap_id)}
        self._backups(self.store.vap(vap_id), status)
        return self._decorate(
            status,
            self.store.restart_policy(vap_id),
            restarts,
            self.store.host_health(),
            self.store.restores(vap_id),
        )

    def _backups(self, vap: VapRow, status: dict[str, Any]) -> None:
        """Add to each component of a VAP's status the time of the latest valid backup of each
        of its data disks (`backups`: target -> Unix seconds; read from the backup files, no
        query)."""
        if vap.state is None:
            return
        for component in status["components"]:
            vm = vap.state.vm(component["path"])
            if vm is not None and any(d.role == "data" for d in vm.disks):
                component["backups"] = self.backups.latest(vm)

    @staticmethod
    def _decorate(
        status: dict[str, Any],
        policy: str,
        restarts: dict[int, dict[str, Any]],
        health: dict[str, Any],
        restores: dict[int, dict[str, dict[str, object]]],
    ) -> dict[str, Any]:
        """Add to a VAP's status its restart policy, each component's recent restarts, its
        host's health when not `up`, and where a VM restored after its host failed got its data
        disks from."""
        status["restart"] = policy
        mine = restarts.get(status["id"], {})
        restored = restores.get(status["id"], {})
        for component in status["components"]:
            component["restarts"] = mine.get(component["path"], 0)
            host = health.get(component.get("host", ""))
            if host is not None and host.health != "up":
                component["host_health"] = host.health  # e.g. running, but its host is suspect
            if component["path"] in restored:
                component["restored"] = restored[component["path"]]
        return status

    def vap_details(self, caller: Caller, vap_id: int) -> dict[str, Any]:
        """One VAP for its page: status, state, events, and the versions that failed in it."""
        try:
            vap = self.store.vap(vap_id)
        except NotFound:
            raise no_vap_id(vap_id) from None
        self.policy.require_owner(caller, vap, no_vap_id(vap_id))
        return {
            "status": self._status(vap.id),
            "state": vap.state,
            "name": vap.name,
            "events": self.store.events(vap.id),
            "failed": self.store.failed_versions(vap.name),
        }

    def vap_ids(self, caller: Caller) -> dict[str, int]:
        """VAP name (`owner/short name`) -> VAP id of the VAPs the caller may see."""
        return {v.name: v.id for v in self.policy.visible(caller, self.store.vaps())}

    def history(self, caller: Caller, ref: str | Path | None = None) -> list[dict[str, Any]]:
        """The update history of the caller's VAPs (every VAP for administrators), or of one."""
        name = self.vap_name(caller, ref) if ref is not None else None
        return self.updating.history(set(self.vap_ids(caller)), name)

    def record_refusal(self, name: str, trigger: str, reason: str) -> None:
        """Record in the history that an automatic update of VAP `name` was refused."""
        self.store.add_history(name, trigger, [], {}, reason)

    # -- hosts, pools, blacklist ----------------------------------------------------------------

    def add_host(
        self,
        caller: Caller,
        name: str,
        uri: str,
        memory: int,
        max_vms: int,
        underlay: str | None = None,
    ) -> HostRow:
        """Register a host; its libvirt connection (and, with an underlay address, its VXLAN
        support) is checked first."""
        self.policy.require_admin(caller, "add hosts")
        checked = None
        if underlay is not None:
            taken = {h.underlay: h.name for h in self.store.hosts() if h.underlay}
            public = [str(r["ip"]) for r in self.store.pools()["public_ips"]]
            checked = overlay.check_underlay(underlay, self.settings.address_base, taken, public)
        return self.hosts_service.add(name, uri, memory, max_vms, checked)

    def remove_host(self, caller: Caller, name: str) -> None:
        """Forget a host; refused while it runs VMs."""
        self.policy.require_admin(caller, "remove hosts")
        self.hosts_service.remove(name)

    def host_dead(self, caller: Caller, name: str) -> dict[str, list[str]]:
        """Declare host `name` gone for good: its VMs are lost, stops waiting for it complete
        (their allocations released); recorded in events and history."""
        self.policy.require_admin(caller, "declare hosts dead")
        self.hosts_service.host(name)  # NotFound for an unknown host
        return self.lifecycle.host_dead(name, caller.name)

    def hosts(self, caller: Caller) -> list[dict[str, Any]]:
        """Every host with its capacity, use, health and whether it is drained."""
        self.policy.require_read(caller, "hosts")
        health = self.store.host_health()
        rows = self.hosts_service.listing()
        for row in rows:
            h = health.get(row["name"])
            if h is not None:
                row.update(health=h.health, since=h.since, drained=h.drained, note=h.note)
        return rows

    def drain(
        self, caller: Caller, name: str, progress: FetchReport | None = None
    ) -> dict[str, Any]:
        """Close host `name` to new VMs and live-migrate every VM off it (`progress(label,
        bytes done, bytes in all)` per migration while it copies)."""
        self.policy.require_admin(caller, "drain hosts")
        self.hosts_service.host(name)  # NotFound for an unknown host
        return self.mover.drain(name, caller.name, progress)

    def undrain(self, caller: Caller, name: str) -> dict[str, Any]:
        """Reopen a drained host to placements."""
        self.policy.require_admin(caller, "undrain hosts")
        self.hosts_service.host(name)
        return self.mover.undrain(name, caller.name)

    def move(
        self,
        caller: Caller,
        ref: str,
        component: str,
        host: str,
        progress: FetchReport | None = None,
    ) -> dict[str, Any]:
        """Live-migrate one component VM of a running VAP (`NAME`, `OWNER/NAME` or a CVL file)
        to `host` (administrators: it overrides placement)."""
        self.policy.require_admin(caller, "move VMs between hosts")
        return self.mover.move(self.vap_name(caller, ref), component, host, caller.name, progress)

    def rebalance(
        self, caller: Caller, dry_run: bool, progress: FetchReport | None = None
    ) -> dict[str, Any]:
        """Plan (and unless `dry_run`, carry out) moves that even out memory use."""
        self.policy.require_admin(caller, "rebalance hosts")
        return self.mover.rebalance(caller.name, dry_run, progress)

    def add_vlans(self, caller: Caller, spec: str) -> int:
        """Add a VLAN range such as "100-163"."""
        self.policy.require_admin(caller, "change the VLAN pool")
        return self.admin.add_vlans(spec)

    def add_public_ips(self, caller: Caller, spec: str) -> int:
        """Add a public IP range such as "192.0.2.10-192.0.2.20"."""
        self.policy.require_admin(caller, "change the public IP pool")
        check_public_ips(
            parse_range(spec),
            self.settings.address_base,
            [h.uri for h in self.store.hosts()],
            len(self.store.pools()["public_ips"]),
        )
        return self.admin.add_public_ips(spec)

    def pools(self, caller: Caller) -> dict[str, Any]:
        """Both pools with their holders."""
        self.policy.require_read(caller, "pools")
        return self.store.pools()

    def blacklist(self, caller: Caller) -> list[dict[str, str]]:
        """The blacklist."""
        self.policy.require_read(caller, "blacklist")
        return self.admin.blacklist()

    def blacklist_add(self, caller: Caller, url: str, version: str) -> None:
        """Blacklist a repository version or "all"."""
        self.policy.require_admin(caller, "change the blacklist")
        self.admin.blacklist_add(url, version)

    def blacklist_remove(self, caller: Caller, url: str, version: str) -> None:
        """Remove a blacklist entry."""
        self.policy.require_admin(caller, "change the blacklist")
        self.store.blacklist_remove(url, version)

    def violations(self, caller: Caller) -> list[dict[str, Any]]:
        """Active VAPs that run a blacklisted version (they are not stopped)."""
        self.policy.require_admin(caller, "list blacklist violations")
        return self.admin.violations()

    # -- trust, subscriptions, tokens -----------------------------------------------------------

    def trust_policy(self, caller: Caller) -> list[dict[str, Any]]:
        """The trust policy: require-signed and key counts, global and per URL."""
        self.policy.require_read(caller, "trust")
        return self.trust.describe()

    def set_trust(self, caller: Caller, url: str | None, require_signed: bool) -> None:
        """Set `require-signed` globally or for one repository URL."""
        self.policy.require_admin(caller, "change the trust policy")
        self.trust.set_require_signed(url, require_signed)

    def trust_key(self, caller: Caller, url: str | None, key: str) -> str:
        """Trust a signing key globally or for one URL."""
        self.policy.require_admin(caller, "change the trust policy")
        return self.trust.add_key(url, key)

    def subscription_list(self, caller: Caller) -> list[dict[str, Any]]:
        """The repositories this utility is subscribed to."""
        self.policy.require_read(caller, "subscriptions")
        return self.subscriptions.list()

    def subscribe(
        self, caller: Caller, repository: str, events_url: str, auth: tuple[str, str] | None
    ) -> dict[str, Any]:
        """Register for publish events of `repository`."""
        self.policy.require_admin(caller, "subscribe to repositories")
        return self.subscriptions.subscribe(repository, events_url, auth)

    def unsubscribe(
        self, caller: Caller, repository: str, auth: tuple[str, str] | None
    ) -> dict[str, Any]:
        """Stop publish events of `repository`."""
        self.policy.require_admin(caller, "unsubscribe from repositories")
        return self.subscriptions.unsubscribe(repository, auth)

    def accept_event(
        self, body: bytes, header: str | None, fallback: bytes | None, rules: EventRules
    ) -> dict[str, Any]:
        """A publish event that passes every rule of `utility.adapters.event_guard` (signature
        by the subscription's secret, else `fallback`, checked before parsing; exact fields;
        fresh; never seen before), else the refusal."""
        return accept_event(body, header, self.subscriptions.secrets(), fallback, self.store, rules)

    def add_token(self, caller: Caller, name: str, role: str) -> str:
        """A new bearer token for `name` with `role` (printed once, stored as its hash)."""
        self.policy.require_admin(caller, "create tokens")
        return self.admin.add_token(name, role)

    def tokens(self, caller: Caller) -> list[dict[str, Any]]:
        """Every token's name, role and creation time (never the token or its digest)."""
        self.policy.require_admin(caller, "list tokens")
        return self.store.tokens()

    def revoke_token(self, caller: Caller, name: str) -> None:
        """Forget the token of `name`: its next request is refused (tokens are looked up on
        every request)."""
        self.policy.require_admin(caller, "revoke tokens")
        self.store.revoke_token(name)


__all__ = ["EMBEDDED_HOST", "Caller", "ClusterManager", "FetchReport", "VapState"]
