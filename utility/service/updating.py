"""Updates: the diff between the running state and the re-evaluated CVL, applied with the one
executor; the history of updates; what an update releases and keeps (see README "Updates")."""

from __future__ import annotations

import dataclasses
import ipaddress
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utility.adapters import disks
from utility.adapters.executor import RolledBack
from utility.core import addresses
from utility.core.desired_state import VapState
from utility.core.model_view import ModelView, join_path
from utility.core.planner import Op, diff
from utility.errors import (
    CheckFailed,
    Conflict,
    NotFound,
    PlacementError,
)
from utility.service import allocation
from utility.service.callers import Caller
from utility.service.lifecycle import Lifecycle, final_evaluation
from utility.service.manager_base import FetchReport


class Updating(Lifecycle):
    """Update and history."""

    # -- update (issue 5: the diff between two states) -----------------------------------------

    def update(
        self,
        caller: Caller,
        cvl_path: str,
        component: str | None = None,
        *,
        dry_run: bool = False,
        secrets: Mapping[str, str] | None = None,
        trigger: str = "user",
        progress: FetchReport | None = None,
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
            model, prepared, problems, trust, fetched = self._checked(path, secrets)
            rows = self.store.vms(vap.id)
            keep = self._held_addressing(vap.id, model, current, rows)
            recorded = {row.path for row in rows}
            fresh = {
                p: prep
                for p, prep in prepared.items()
                if current.vm(p) is None and p not in recorded
            }
            # 1. what the pools would give (a short write transaction, nothing reserved yet)
            with self._alloc_lock, self.store.transaction() as db:
                placed, addressing, more = self._allocate(db, model, fresh, None, keep)
            problems += more
            if problems:
                raise CheckFailed(problems)
            # 2. downloads and the address-filled evaluation, holding no state lock
            placement = {
                **{vm.path: vm.host for vm in current.vms if vm.path in prepared},
                **placed,
            }
            for row in rows:  # VMs stopped on request (not in the current state) keep their host
                placement.setdefault(row.path, row.host)
            bases = self._fetch_bases(prepared, progress)
            names = allocation.component_names(model)
            overrides = {**secrets, **addresses.overrides_for(model, addressing, names)}
            final = final_evaluation(path, overrides, trust, fetched)
            desired = allocation.build_state(
                vap_id=vap.id,
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
            if component:
                desired = _merge(current, desired, component)
            plan = diff(current, desired, vanished=Op.REMOVE)
            retried = _retried_failures(plan, self.store.failed_versions(str(path)))
            skip = None
            if retried and trigger != "user":
                skip = (
                    f"skipped: {', '.join(retried)} failed before; waiting for a newer "
                    "version (a manual cui update can force it)"
                )
            proceed = bool(plan) and not dry_run and skip is None
            # 3. reserve exactly what was planned with, or refuse if a concurrent start took it
            if proceed:
                taken = Conflict(
                    f"{path}: another VAP took addresses or host room while "
                    "this update was prepared; run it again"
                )
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
                    self.record_history(
                        str(path), trigger, plan.lines(), _version_changes(plan), skip
                    )
                return {
                    "plan": plan.to_json(),
                    "lines": plan.lines(),
                    "applied": False,
                    "error": skip,
                }
            self._secrets[str(path)] = secrets
            self.store.set_secret_keys(vap.id, [k for k, v in secrets.items() if v])
            outcome = self._executor(vap.id, path.parent / ".attic").run(plan)
            after = _state_after(current, desired, plan, set(outcome.done))
            removed = {
                a.vm.path
                for a in plan.actions
                if a.op is Op.REMOVE and a.vm is not None and a.key in outcome.done
            }
            self._settle(vap.id, after, {vm.path for vm in model.vms()}, removed, path)
            self.store.set_vap(vap.id, status="running", state=after, error=outcome.error)
            if isinstance(outcome.exception, RolledBack):
                failed = next(a for a in plan.actions if a.key == outcome.failed)
                origin = (failed.vm.origin if failed.vm else None) or {}
                self.store.mark_failed(
                    str(path), str(origin.get("url")), str(origin.get("version"))
                )
            self.record_history(
                str(path),
                trigger,
                plan.lines(),
                _version_changes(plan),
                f"failed: {outcome.error}" if outcome.error else "applied",
            )
            return {
                "plan": plan.to_json(),
                "lines": plan.lines(),
                "applied": True,
                "error": outcome.error,
            }

    def _needs_user(self, vap_id: int, path: Path, trigger: str, lost: list[str]) -> dict[str, Any]:
        """An automatic update that cannot run: the VAP's sensitive values were held only in
        memory and the cluster manager restarted since. Say so in history and status; the
        user's next `cui update` (their agent supplies the values) clears it."""
        message = (
            f"waiting for its user: the sensitive values of {', '.join(lost)} are kept "
            "only in memory and were lost when the cluster manager restarted; run "
            f"`cui update {path}` to supply them"
        )
        self.record_history(str(path), trigger, [], {}, message)
        self.store.set_vap(vap_id, error=message)
        return {"plan": [], "lines": [], "applied": False, "error": message}

    def record_history(
        self,
        cvl_path: str,
        trigger: str,
        actions: list[str],
        versions: dict[str, list[str | None]],
        result: str,
    ) -> None:
        """Append to the update history (`cui history`)."""
        self.store.add_history(str(Path(cvl_path).resolve()), trigger, actions, versions, result)

    def history(self, caller: Caller, cvl_path: str | None = None) -> list[dict[str, Any]]:
        """The update history of the caller's VAPs (every VAP for administrators)."""
        path = str(Path(cvl_path).resolve()) if cvl_path else None
        mine = {v.cvl_path for v in self.store.vaps() if caller.admin or v.owner == caller.name}
        return [h for h in self.store.history(path) if h["cvl_path"] in mine]

    def _settle(
        self, vap_id: int, state: VapState, members: set[str], removed: set[str], cvl_path: Path
    ) -> None:
        """Release what a VAP no longer uses after an update; drop stale VM records.

        The rule: a VM running after the update holds exactly the MACs and IPs its state shows;
        a VM stopped on request (`cui stop FILE COMP`) that the CVL still has (`members`) keeps
        its record, host, MACs and IPs, and the update that restarts it reuses them; every other
        address, VM record and unused VLAN of the VAP is released, including those of a
        component removed from the CVL while it was stopped, whose directory (data disks
        included) then goes to the attic like any removed component's.
        """
        running = {vm.path for vm in state.vms}
        in_use = {
            join_path(vm.path, i.name): {i.mac, i.ip} for vm in state.vms for i in vm.interfaces
        }
        kept_stopped = (members - removed) - running
        with self.store.transaction() as db:
            for address, iface in db.execute(
                "SELECT address, path FROM addresses WHERE vap_id=?", (vap_id,)
            ).fetchall():
                vm_path = iface.rpartition(".")[0]
                held = (
                    address in in_use.get(iface, ())
                    if vm_path in running
                    else vm_path in kept_stopped
                )
                if not held:
                    db.execute("DELETE FROM addresses WHERE address=?", (address,))
                    db.execute(
                        "UPDATE public_ips SET vap_id=NULL, iface=NULL WHERE ip=?", (address,)
                    )
            used_vlans = set(state.vlans.values())
            for (vlan,) in db.execute(
                "SELECT vlan FROM vlans WHERE vap_id=?", (vap_id,)
            ).fetchall():
                if vlan not in used_vlans:
                    db.execute("UPDATE vlans SET vap_id=NULL, segment=NULL WHERE vlan=?", (vlan,))
            stale = []
            for (vm_path,) in db.execute(
                "SELECT path FROM vms WHERE vap_id=?", (vap_id,)
            ).fetchall():
                if vm_path not in running | kept_stopped:
                    db.execute("DELETE FROM vms WHERE vap_id=? AND path=?", (vap_id, vm_path))
                    if vm_path not in members and vm_path not in removed:
                        stale.append(vm_path)
        for vm_path in stale:
            moved = disks.move_directory_to_attic(
                cvl_path.parent / (vm_path or "root"), vm_path or "root", cvl_path.parent / ".attic"
            )
            self.store.event(
                vap_id,
                "remove",
                f"{vm_path} (stopped) is no longer in the CVL: "
                f"record released, directory to {moved}",
            )

    def _held_addressing(
        self, vap_id: int, model: ModelView, current: VapState, rows: list[Any]
    ) -> addresses.Addressing:
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
                    net = (
                        addresses.subnet_for_vlan(vlan, self.settings.address_base)
                        if vlan is not None
                        else ipaddress.IPv4Network("0.0.0.0/32")
                    )
                    ok = vlan is not None and ipaddress.IPv4Address(ip) in net
                if ok:
                    interfaces[iface.path] = addresses.InterfaceAddress(
                        path=iface.path,
                        segment=segment,
                        mac=mac,
                        ip=ip,
                        subnet=str(net.network_address),
                        netmask=addresses.NETMASK,
                    )
        return addresses.Addressing(vlans=dict(keep.vlans), interfaces=interfaces)


def _addressing_of(state: VapState) -> addresses.Addressing:
    """The addresses a running VAP holds, in the form `addresses.assign(keep=...)` takes."""
    interfaces = {}
    for vm in state.vms:
        for i in vm.interfaces:
            path = f"{vm.path}.{i.name}" if vm.path else i.name
            net = ipaddress.IPv4Network(f"{i.ip}/{i.netmask}", strict=False)
            interfaces[path] = addresses.InterfaceAddress(
                path=path,
                segment=i.segment,
                mac=i.mac,
                ip=i.ip,
                subnet=str(net.network_address),
                netmask=i.netmask,
            )
    return addresses.Addressing(vlans=dict(state.vlans), interfaces=interfaces)


def _merge(current: VapState, desired: VapState, component: str) -> VapState:
    """`desired` for the VMs at or under `component`, `current` for every other VM."""

    def inside(p: str) -> bool:
        return p == component or p.startswith(component + ".")

    vms = [vm for vm in current.vms if not inside(vm.path)]
    vms += [vm for vm in desired.vms if inside(vm.path)]
    if not any(inside(vm.path) for vm in [*current.vms, *desired.vms]):
        raise NotFound(f"no component {component!r} in {current.cvl_path}")
    return _with_networks(
        dataclasses.replace(current, vms=tuple(sorted(vms, key=_path_key))),
        [*current.networks, *desired.networks],
    )


def _path_key(vm: Any) -> str:
    return str(vm.path)


def _with_networks(state: VapState, candidates: list[Any]) -> VapState:
    """`state` with exactly the networks its VMs use, taken from `candidates`."""
    used = {(i.network, vm.host) for vm in state.vms for i in vm.interfaces}
    nets = {(n.name, n.host): n for n in candidates if (n.name, n.host) in used}
    return dataclasses.replace(state, networks=tuple(nets[k] for k in sorted(nets)))


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
    vlans = {
        seg: tag
        for seg, tag in {**dict(current.vlans), **dict(desired.vlans)}.items()
        if seg in segments or seg in desired.vlans
    }
    base = dataclasses.replace(desired, vms=tuple(vms[p] for p in sorted(vms)), vlans=vlans)
    return _with_networks(base, [*current.networks, *desired.networks])
