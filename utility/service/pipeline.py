"""The steps start and update share around the planner: check, fetch, and build the desired state.

1. `check`: evaluate the CVL, gather every static problem (CVL, trust, disks, blacklist) and
   read each VM appliance's description (`desired.prepare`);
2. `fetch_bases`: download the program disks and kernels into the object cache;
3. `desired_state`: the feedback loop — the addresses the allocator assigned are fed back as
   overrides into a second CVL evaluation (on the imported texts the checks saw), and the result
   becomes the desired `VapState`, refused when a VAN segment would be cut between real hosts
   that VXLAN cannot join (a host without an underlay address).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from utility.adapters import bundles, cvl_adapter
from utility.adapters.store import HostRow, Store
from utility.adapters.trust_policy import TrustPolicy, TrustSession
from utility.core import addresses, overlay
from utility.core.desired_state import VapState
from utility.core.model_view import ModelView
from utility.errors import CheckFailed, TrustRefused, UtilityError
from utility.service import desired
from utility.service.desired import Prepared, Settings

FetchReport = Callable[[str, int, int], None]
"""`report(label, bytes done, bytes total)` while a disk's objects download."""


@dataclass(frozen=True)
class Checked:
    """A VAP's CVL bundle after the checks: its model, its appliances, and what is wrong."""

    name: str
    source: cvl_adapter.Source
    model: ModelView
    prepared: dict[str, Prepared]
    problems: list[str]
    trust: TrustSession
    fetched: list[cvl_adapter.Fetched]


class Pipeline:
    """Check, fetch and build, for one cluster manager.

    Args:
        store: for the blacklist.
        trust: the trust policy every fetched text and version is checked against.
        settings: naming and addressing choices.
        cache_dir: the object cache disks are downloaded into.
        run_dir: where guest sockets go when a VM directory's path is too long.
        state_dir: the state directory; each VAP's storage is under it (`bundles.vap_dir`: VM
            disks, the attic).
    """

    def __init__(
        self,
        store: Store,
        trust: TrustPolicy,
        settings: Settings,
        cache_dir: Path,
        run_dir: Path,
        state_dir: Path,
    ) -> None:
        self.store = store
        self.trust = trust
        self.settings = settings
        self.cache_dir = cache_dir
        self.run_dir = run_dir
        self.state_dir = state_dir

    def vap_dir(self, vap_id: int) -> Path:
        """Where VAP `vap_id`'s VM directories and attic live (the utility's storage)."""
        return bundles.vap_dir(self.state_dir, vap_id)

    def check(self, name: str, source: cvl_adapter.Source, secrets: Mapping[str, str]) -> Checked:
        """Evaluate for the pre-start/pre-update checks and gather every static problem, so
        start and update report the same things the same way.

        Raises:
            CheckFailed: the CVL does not evaluate at all.
        """
        trust = self.trust.session()
        fetched: list[cvl_adapter.Fetched] = []
        model, problems = cvl_adapter.evaluate_for_checks(source, secrets, fetched)
        if model is None:
            raise CheckFailed(problems)
        problems += trust.all_problems(versions_of(model), fetched)
        prepared, more = desired.prepare(model, source, trust.release_for)
        problems += more + desired.static_problems(model, self.store.blacklist())
        return Checked(name, source, model, prepared, problems, trust, fetched)

    def fetch_bases(
        self,
        prepared: Mapping[str, Prepared],
        progress: FetchReport | None = None,
        fetch: bool = True,
    ) -> dict[tuple[str, str], str]:
        """Local paths of each program disk's top image and of direct-boot kernels (with `fetch`
        False, where the disks would land, from the versions' disk lists: nothing downloaded)."""
        bases: dict[tuple[str, str], str] = {}
        for vm_path, prep in prepared.items():
            data = {device for device, _ in prep.data_disks}
            for disk in prep.spec.disks:
                if disk.target not in data:
                    label = f"{vm_path or '(root)'} {disk.source} ({prep.files.label})"
                    report = functools.partial(progress, label) if progress else None
                    local = prep.files.local_path(disk.source, self.cache_dir, report, fetch)
                    bases[(vm_path, disk.target)] = str(local)
            for key in ("kernel", "initrd"):
                name = getattr(prep.spec, key)
                if name:
                    bases[(vm_path, f"os:{key}")] = str(prep.files.local_path(name, self.cache_dir))
        return bases

    def desired_state(
        self,
        vap_id: int,
        checked: Checked,
        addressing: addresses.Addressing,
        placement: Mapping[str, str],
        bases: Mapping[tuple[str, str], str],
        secrets: Mapping[str, str],
    ) -> VapState:
        """The desired state: the assigned addresses fed into a second evaluation, then built."""
        names = desired.component_names(checked.model)
        assigned = addresses.overrides_for(checked.model, addressing, names)
        final = final_evaluation(checked.source, secrets, checked.trust, checked.fetched, assigned)
        _same_versions(checked.model, final)
        hosts = self.store.hosts()
        state = desired.build_state(
            vap_id=vap_id,
            name=checked.name,
            vap_dir=self.vap_dir(vap_id),
            model=final,
            prepared=checked.prepared,
            addressing=addressing,
            placement=placement,
            bases=bases,
            secrets=secrets,
            settings=self.settings,
            run_dir=self.run_dir,
            underlays={h.name: h.underlay for h in hosts},
        )
        check_segments(state, hosts)
        return state


def check_segments(state: VapState, hosts: Iterable[HostRow]) -> None:
    """Refuse a state whose VAN segment spans real hosts VXLAN cannot join (no underlay).

    A simulated (`test:`) host forwards nothing: its segments are joined only on paper.

    Raises:
        CheckFailed: one line per cut segment.
    """
    simulated = {h.name for h in hosts if h.uri.startswith("test:")}
    cut = overlay.cut_segments(n for n in state.networks if n.host not in simulated)
    if cut:
        raise CheckFailed(cut)


def final_evaluation(
    source: cvl_adapter.Source,
    secrets: Mapping[str, str],
    trust: TrustSession,
    checked: list[cvl_adapter.Fetched],
    assigned: Mapping[str, str],
) -> ModelView:
    """The address-filled evaluation (the utility's `assigned` values, the user's `secrets`),
    on the imported texts the checks already saw (`checked`); anything it must fetch anew is
    checked like them."""
    fetched: list[cvl_adapter.Fetched] = []
    final = cvl_adapter.evaluate(source, secrets, fetched, replay=checked, assigned=assigned)
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
            f"a repository published a new version meanwhile ({changed}); run it again"
        )


def versions_of(model: ModelView) -> list[tuple[str, str]]:
    """(repository URL, version) of every import and component origin of a model."""
    pairs = [(c.origin.url, c.origin.version) for c in model.components.values() if c.origin]
    pairs += [(str(i["url"]), str(i.get("version"))) for i in model.imports if i.get("url")]
    return pairs
