"""Updates: the diff between the running state and the re-evaluated CVL, applied with the one
`apply`; the history of updates; what an update releases and keeps (see README "Updates")."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from utility.adapters import disks
from utility.adapters.allocations import HeldRows
from utility.adapters.executor import RolledBack
from utility.adapters.store import VapRow, VmRow, short_name
from utility.core import addresses
from utility.core.bundle import Bundle
from utility.core.desired_state import VapState
from utility.core.model_view import ModelView, join_path
from utility.core.planner import Op, Plan
from utility.errors import CheckFailed, Conflict, NotFound
from utility.service.allocator import Proposal
from utility.service.lifecycle import Lifecycle, Parts
from utility.service.pipeline import Checked, FetchReport


class Updating:
    """Update of running VAPs, and their update history.

    Args:
        parts: what start, stop and update share.
        lifecycle: for the active VAP of a CVL file.
    """

    def __init__(self, parts: Parts, lifecycle: Lifecycle) -> None:
        self.parts = parts
        self.store = parts.store
        self.lifecycle = lifecycle
        self.after_update: Callable[[int], object] | None = None
        """Called with the VAP id after an update applied without error (its backups)."""

    def update(
        self,
        name: str,
        component: str | None = None,
        *,
        bundle: Bundle | None = None,
        dry_run: bool = False,
        secrets: Mapping[str, str] | None = None,
        trigger: str = "user",
        progress: FetchReport | None = None,
    ) -> dict[str, Any]:
        """Re-evaluate a running VAP's CVL (`bundle`, a newly submitted one, else the stored
        bundle it runs), diff against what runs, print and apply the plan. The bundle becomes the
        VAP's next version once applied (or when there was nothing to change).

        Existing components keep their host, MACs, IPs and VLANs; new ones are allocated like a
        start; removed ones are stopped and their directory moved to the VAP's `.attic/`.
        Dependents are not restarted when a provider is updated (no cascade): a provider's
        update is a short outage they must tolerate, and a dependent whose own parameters change
        gets them resent (after the provider is back). `dry_run` changes nothing.

        Returns:
            {"plan": [...], "lines": [...], "applied": bool, "error": str | None}
        """
        p = self.parts
        secrets = {**p.secrets.values(name), **dict(secrets or {})}
        with p.locks.for_path(name):
            vap = self.lifecycle.active(name)
            current = vap.state
            if current is None:
                raise NotFound(f"{short_name(name)} has no recorded state")
            lost = p.secrets.lost(vap.id, secrets)
            if lost and trigger != "user":
                return self._needs_user(vap.id, name, trigger, lost)
            stored = p.bundles.pending(bundle) if bundle else self.lifecycle.current_bundle(vap)
            source = self.lifecycle.source(vap.id, stored)
            checked = p.pipeline.check(name, source, secrets)
            rows = self.store.vms(vap.id)
            fresh = {
                vm_path: prep
                for vm_path, prep in checked.prepared.items()
                if current.vm(vm_path) is None and vm_path not in {row.path for row in rows}
            }
            # 1. what the pools would give (nothing reserved yet)
            keep = self._held_addressing(vap.id, checked.model, current, rows)
            with p.allocator.session() as db:
                proposal = p.allocator.propose(db, checked.model, fresh, keep)
            if checked.problems + proposal.problems:
                raise CheckFailed(checked.problems + proposal.problems)
            if bundle is not None and not dry_run:
                p.bundles.save(bundle)  # checked: kept, recorded as a version once it runs
            # 2. downloads and the address-filled evaluation, holding no state lock
            desired = self._desired(
                vap.id, checked, proposal, current, rows, secrets, progress, fetch=not dry_run
            )
            if component:
                desired = _merge(current, desired, component)
            plan = p.applier.plan(current, desired, vanished=Op.REMOVE)
            skip = self._skip_reason(plan, name, trigger)
            if not plan or dry_run or skip is not None:
                return self._not_applied(
                    vap, checked, current, plan, trigger, secrets, dry_run, skip
                )
            # 3. reserve exactly what was planned with, or refuse if another VAP took it
            self._reserve(vap.id, name, proposal, fresh)
            p.secrets.remember(vap.id, name, secrets)
            return self._apply(vap.id, checked, current, desired, plan, trigger)

    def _desired(
        self,
        vap_id: int,
        checked: Checked,
        proposal: Proposal,
        current: VapState,
        rows: list[VmRow],
        secrets: Mapping[str, str],
        progress: FetchReport | None,
        fetch: bool = True,
    ) -> VapState:
        """The desired state: existing VMs keep their host, new ones go where proposed (with
        `fetch` False, planned from the disk lists without downloading: a dry run)."""
        placement = {
            **{vm.path: vm.host for vm in current.vms if vm.path in checked.prepared},
            **proposal.placement,
        }
        for row in rows:  # VMs stopped on request (not in the current state) keep their host
            placement.setdefault(row.path, row.host)
        bases = self.parts.pipeline.fetch_bases(checked.prepared, progress, fetch)
        return self.parts.pipeline.desired_state(
            vap_id, checked, proposal.addressing, placement, bases, secrets
        )

    def _skip_reason(self, plan: Plan, name: str, trigger: str) -> str | None:
        """Why an automatic update does not retry versions that failed before (None: it runs)."""
        retried = _retried_failures(plan, self.store.failed_versions(name))
        if not retried or trigger == "user":
            return None
        return (
            f"skipped: {', '.join(retried)} failed before; waiting for a newer "
            "version (a manual cui update can force it)"
        )

    def _reserve(
        self, vap_id: int, name: str, proposal: Proposal, fresh: Mapping[str, Any]
    ) -> None:
        taken = (
            f"{short_name(name)}: another VAP took addresses or host room while "
            "this update was prepared; run it again"
        )
        with self.parts.allocator.session() as db:
            try:
                self.parts.allocator.reserve(db, vap_id, proposal, fresh)
            except Conflict:
                raise Conflict(taken) from None
            self.store.set_vap(vap_id, status="updating", db=db)

    def _not_applied(
        self,
        vap: VapRow,
        checked: Checked,
        current: VapState,
        plan: Plan,
        trigger: str,
        secrets: Mapping[str, str],
        dry_run: bool,
        skip: str | None,
    ) -> dict[str, Any]:
        """A dry run, an empty plan or a skipped automatic update: settle, say so."""
        name = checked.name
        if not dry_run:
            self._settle(vap.id, current, {vm.path for vm in checked.model.vms()}, set())
            if skip is None and not plan:  # the bundle evaluates to what runs: it is what runs
                self.store.add_vap_bundle(vap.id, checked.source.bundle.digest)
            if trigger == "user":  # the user's values are what automatic updates use next
                self.parts.secrets.remember(vap.id, name, secrets)
                if (vap.error or "").startswith("waiting for its user"):
                    self.store.set_vap(vap.id, status="running")
        if skip:
            self.record_history(name, trigger, plan, skip)
        return {"plan": plan.to_json(), "lines": plan.lines(), "applied": False, "error": skip}

    def _apply(
        self,
        vap_id: int,
        checked: Checked,
        current: VapState,
        desired: VapState,
        plan: Plan,
        trigger: str,
    ) -> dict[str, Any]:
        name = checked.name
        attic = self.parts.pipeline.vap_dir(vap_id) / ".attic"
        outcome = self.parts.applier.apply(
            vap_id, current, desired, vanished=Op.REMOVE, attic=attic
        ).outcome
        after = _state_after(current, desired, plan, set(outcome.done))
        removed = {
            a.vm.path
            for a in plan.actions
            if a.op is Op.REMOVE and a.vm is not None and a.key in outcome.done
        }
        self._settle(vap_id, after, {vm.path for vm in checked.model.vms()}, removed)
        self.parts.secrets.hold(vap_id, after)
        self.store.set_vap(vap_id, status="running", state=after, error=outcome.error)
        if outcome.error is None:
            self.store.add_vap_bundle(vap_id, checked.source.bundle.digest)
        if isinstance(outcome.exception, RolledBack):
            failed = next(a for a in plan.actions if a.key == outcome.failed)
            origin = (failed.vm.origin if failed.vm else None) or {}
            self.store.mark_failed(name, str(origin.get("url")), str(origin.get("version")))
        result = f"failed: {outcome.error}" if outcome.error else "applied"
        self.record_history(name, trigger, plan, result)
        if outcome.error is None and self.after_update is not None:
            self.after_update(vap_id)
        return {
            "plan": plan.to_json(),
            "lines": plan.lines(),
            "applied": True,
            "error": outcome.error,
        }

    def _needs_user(self, vap_id: int, name: str, trigger: str, lost: list[str]) -> dict[str, Any]:
        """An automatic update that cannot run: the VAP's sensitive values were held only in
        memory and the cluster manager restarted since. Say so in history and status; the
        user's next `cui update` (their secret cache supplies the values) clears it."""
        message = (
            f"waiting for its user: the sensitive values of {', '.join(lost)} are kept "
            "only in memory and were lost when the cluster manager restarted; run "
            f"`cui update {short_name(name)}` to supply them"
        )
        self.record_history(name, trigger, Plan(actions=()), message)
        self.store.set_vap(vap_id, error=message)
        return {"plan": [], "lines": [], "applied": False, "error": message}

    def record_history(self, name: str, trigger: str, plan: Plan, result: str) -> None:
        """Append an update to the history (`cui history`)."""
        self.store.add_history(name, trigger, plan.lines(), _version_changes(plan), result)

    def history(self, visible: set[str], name: str | None = None) -> list[dict[str, Any]]:
        """The update history of the VAPs whose name is in `visible`, or of one of them."""
        return [h for h in self.store.history(name) if h["name"] in visible]

    def _settle(self, vap_id: int, state: VapState, members: set[str], removed: set[str]) -> None:
        """Release what a VAP no longer uses after an update; drop stale VM records.

        The rule: a VM running after the update holds exactly the MACs and IPs its state shows;
        a VM stopped on request (`cui stop NAME COMP`) that the CVL still has (`members`) keeps
        its record, host, MACs and IPs, and the update that restarts it reuses them; every other
        address, VM record and unused VLAN of the VAP is released, including those of a
        component removed from the CVL while it was stopped, whose directory (data disks
        included) then goes to the attic like any removed component's.
        """
        running = {vm.path for vm in state.vms}
        in_use = {
            join_path(vm.path, i.name): {i.mac, i.ip} for vm in state.vms for i in vm.interfaces
        }
        keep = HeldRows(in_use, running, (members - removed) - running, set(state.vlans.values()))
        dropped = self.parts.allocations.settle(vap_id, keep)
        storage = self.parts.pipeline.vap_dir(vap_id)
        for vm_path in [p for p in dropped if p not in members and p not in removed]:
            moved = disks.move_directory_to_attic(
                storage / (vm_path or "root"), vm_path or "root", storage / ".attic"
            )
            self.store.event(
                vap_id,
                "remove",
                f"{vm_path} (stopped) is no longer in the CVL: "
                f"record released, directory to {moved}",
            )

    def _held_addressing(
        self, vap_id: int, model: ModelView, current: VapState, rows: list[VmRow]
    ) -> addresses.Addressing:
        """What the VAP holds: the running VMs' addresses, plus those of VMs stopped on request
        whose interface is still on the same segment (so a restart keeps its MAC and IP)."""
        keep = _addressing_of(current)
        stopped = {r.path for r in rows if current.vm(r.path) is None}
        if not stopped:
            return keep
        held = self.parts.allocations.held_addresses(vap_id)
        public = self.parts.allocations.held_public_ips(vap_id)
        interfaces = dict(keep.interfaces)
        for vm in model.vms():
            if vm.path not in stopped:
                continue
            for iface in model.interfaces(vm.path):
                got = held.get(iface.path, {})
                mac, ip = got.get("mac"), got.get("ip")
                if mac is None or ip is None:
                    continue
                kept = self._kept_interface(model, iface.path, mac, ip, keep, public)
                if kept is not None:
                    interfaces[iface.path] = kept
        return addresses.Addressing(vlans=dict(keep.vlans), interfaces=interfaces)

    def _kept_interface(
        self,
        model: ModelView,
        iface_path: str,
        mac: str,
        ip: str,
        keep: addresses.Addressing,
        public: set[str],
    ) -> addresses.InterfaceAddress | None:
        """A stopped VM's interface keeps MAC and IP while still on the segment they fit."""
        segment = addresses.segment_of(model, iface_path)
        if segment == addresses.PUBLIC:
            ok, net = ip in public, ipaddress.IPv4Network(f"{ip}/24", strict=False)
        else:
            vlan = keep.vlans.get(segment)
            net = (
                addresses.subnet_for_vlan(vlan, self.parts.settings.address_base)
                if vlan is not None
                else ipaddress.IPv4Network("0.0.0.0/32")
            )
            ok = vlan is not None and ipaddress.IPv4Address(ip) in net
        if not ok:
            return None
        return addresses.InterfaceAddress(
            path=iface_path,
            segment=segment,
            mac=mac,
            ip=ip,
            subnet=str(net.network_address),
            netmask=addresses.NETMASK,
        )


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
        raise NotFound(f"no component {component!r} in {short_name(current.cvl_path)}")
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
