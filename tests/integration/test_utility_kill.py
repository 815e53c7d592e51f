"""`kill -9` of the utility daemon at 20 points of a start and of an update of a multi-VM VAP.

The daemon is the real one (`cui utility serve`, gunicorn) on a *persistent* simulated host
(`simulated_host_uri(persistent=True)`): its domains and networks survive the daemon like a real
libvirtd's, so what a killed daemon left running is still there for the next one. The kill
points are chosen deterministically: a reference run writes the daemon's steps (committed store
transactions, executor action begin / domain created / done) with `COLLECTIVE_KILL_TRACE`; each
case then runs the same requests with `COLLECTIVE_KILL_AT=N` (see `utility.adapters.killpoint`),
N spread evenly over the start's steps (8 cases) and over the update's (12 cases; with
today's plan they include the rebuilt VM's boot, between its data disks' copy and the new
version's readiness).

The VAP is the paper's groupware (DNS `d`, OpenLDAP `l`, Firewall `f`, `l` and `f` requiring
`d`); the update changes `l`'s hardware (a reboot), the domain name (parameters resent to `d`
and `l`) and adds a fourth VM `d2` (new addresses). After the restart: the addresses, VLANs
and public IPs in the database are exactly those of the live VMs' recorded state, one each and
unique, matching the domains on the host; components the killed operation had not touched keep
running in the very same domain; an update is never turned into a failed VAP; and a new start
succeeds beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from tests.conftest import REPO_ROOT
from tests.daemons import UtilityDaemon, run_cui
from utility.adapters.disks import BACKUP_SUFFIX
from utility.adapters.killpoint import ENV_AT, ENV_TRACE
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.adapters.store import HostRow, Store

PAPER = REPO_ROOT / "examples" / "paper"
CASES = {"start": 8, "update": 12}  # 20 kill points; the update has more kinds of step
PREFIX = "kt"


@dataclass
class Run:
    """One scenario's files: state directory, host node file, the VAP's CVL."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def node(self) -> Path:
        return self.root / "hosts" / "h1.xml"

    @property
    def acme(self) -> Path:
        return self.root / "acme" / "AcmeGroupware.cvl"


def _daemon(run: Run, env: dict[str, str]) -> UtilityDaemon:
    return UtilityDaemon(
        run.state, "--prefix", PREFIX, "--check-interval", "0", "--ready-timeout", "5", env=env
    )


def _prepare(root: Path) -> Run:
    run = Run(root)
    (root / "hosts").mkdir(parents=True)
    paper_tree(PAPER, root / "acme")
    paper_tree(PAPER, root / "other")
    run.state.mkdir(mode=0o711)
    _provision(run)
    return run


def _provision(run: Run) -> None:
    """The host and pools, written through the state layer before the daemon starts (as
    `cui host add`, `vlan add`, `publicip add` would; fewer processes keep the test short)."""
    uri = simulated_host_uri(run.node.parent, "h1", persistent=True)
    store = Store(run.state)
    store.add_host(HostRow("h1", uri, 2 << 30, 12))
    store.add_vlans(list(range(100, 104)))
    store.add_public_ips([f"192.0.2.{i}" for i in range(10, 14)])


def _edit_for_update(run: Run) -> None:
    """l gets more memory (rebuilt), the domain changes (resent), a new VM d2 joins."""
    ldap = run.acme.parent / "OpenLDAP" / "ldap.vmx"
    ldap.write_text(ldap.read_text().replace(">64<", ">96<"))
    cvl = run.acme
    cvl.write_text(cvl.read_text().replace('"acme.org"', '"acme.net"'))
    groupware = run.acme.parent / "Groupware" / "Groupware.cvl"
    text = groupware.read_text().replace(
        "    Firewall f;\n",
        "    Firewall f;\n    DNS d2;\n",
    )
    text = text.replace(
        "    l.domain = domain;\n",
        "    l.domain = domain;\n    d2.domain = domain;\n"
        "    d2.dnshosts = { name => d.name, ip => d.ethernet0.ip };\n",
    )
    groupware.write_text(text)


def _steps(trace: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in trace.read_text().splitlines()]


@dataclass
class Reference:
    """The reference run: step ranges per phase and the saved states cases start from.

    Every case of a worker runs in the same directory (`case`), restored from a template made
    there, so the absolute paths in the database and on the host stay right: `fresh` (pools and
    host only) for kills during a start, `started` (the VAP running, daemon stopped cleanly)
    for kills during an update.
    """

    case: Path
    templates: Path
    bounds: dict[str, tuple[int, int]]

    def restore(self, template: str) -> Run:
        shutil.rmtree(self.case, ignore_errors=True)
        shutil.copytree(self.templates / template, self.case, symlinks=True)
        return Run(self.case)


def _save(run: Run, templates: Path, name: str) -> None:
    shutil.copytree(run.root, templates / name, symlinks=True, ignore=_sockets)


def _sockets(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n.endswith(".sock") or n == "trace"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Count the steps of a start and of an update (`COLLECTIVE_KILL_TRACE`), saving the
    states the cases start from."""
    base = tmp_path_factory.mktemp("kill")
    run = _prepare(base / "case")
    templates = base / "templates"
    _save(run, templates, "fresh")
    trace = run.root / "trace"
    with _daemon(run, {ENV_TRACE: str(trace)}) as daemon:
        run_cui("start", str(run.acme), env=daemon.env, ok=True)
    started = len(_steps(trace))
    _save(run, templates, "started")
    trace.unlink()
    with _daemon(run, {ENV_TRACE: str(trace)}) as daemon:
        _edit_for_update(run)
        updated = run_cui("update", str(run.acme), env=daemon.env, ok=True)
        assert "d2" in updated.stdout, updated.stdout
    steps = _steps(trace)
    assert started > 5 and len(steps) > 5, steps
    assert any("l domain-created" in s for s in steps), steps  # the rebuilt VM's boot
    return Reference(base / "case", templates, {"start": (1, started), "update": (1, len(steps))})


def _point(bounds: tuple[int, int], case: int, cases: int) -> int:
    first, last = bounds
    return first + round(case * (last - first) / (cases - 1))


def _domains(node: Path) -> dict[str, tuple[str, list[str]]]:
    """The running domains a fresh connection to the host's saved state sees:
    name -> (uuid, MACs)."""
    conn = libvirt.open(f"test://{node}")
    try:
        out = {}
        for dom in conn.listAllDomains():
            if not dom.isActive():
                continue
            tree = ET.fromstring(dom.XMLDesc(0))
            macs = [m.get("address", "") for m in tree.iter("mac")]
            out[dom.name()] = (dom.UUIDString(), macs)
        return out
    finally:
        conn.close()


def _db(state: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{state / 'utility.sqlite3'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def _check_allocations(run: Run) -> dict[int, dict[str, object]]:
    """Every held address, VLAN and public IP is one of a live VM's (its recorded state), each
    once, and the host runs exactly the live VMs with those MACs. Returns vap id -> state."""
    db = _db(run.state)
    try:
        vaps = {
            r["id"]: (r["status"], json.loads(r["state_json"]) if r["state_json"] else None)
            for r in db.execute("SELECT id, status, state_json FROM vaps")
        }
        addresses = [tuple(r) for r in db.execute("SELECT address, kind, vap_id FROM addresses")]
        vlans = {r[0]: r[1] for r in db.execute("SELECT vlan, vap_id FROM vlans")}
        public = {r[0]: r[1] for r in db.execute("SELECT ip, vap_id FROM public_ips")}
        vms = [dict(r) for r in db.execute("SELECT * FROM vms")]
    finally:
        db.close()
    live = {i: s for i, (status, s) in vaps.items() if status == "running"}
    assert {status for status, _ in vaps.values()} <= {"running", "failed", "stopped"}, vaps
    expected_addresses = []
    expected_domains = {}
    for vap_id, state in live.items():
        assert state is not None
        for vm in state["vms"]:
            macs = [i["mac"] for i in vm["interfaces"]]
            expected_domains[vm["domain"]] = sorted(macs)
            for iface in vm["interfaces"]:
                expected_addresses.append((iface["mac"], "mac", vap_id))
                if iface.get("ip"):
                    expected_addresses.append((iface["ip"], "ip", vap_id))
                    if iface["ip"] in public:
                        assert public[iface["ip"]] == vap_id, (iface, public)
        held_vlans = sorted(v for v, owner in vlans.items() if owner == vap_id)
        assert held_vlans == sorted(set(state["vlans"].values())), (held_vlans, state["vlans"])
    held_kinds = {(a, k, v) for a, k, v in addresses if k in ("mac", "ip")}
    assert sorted(held_kinds) == sorted(set(expected_addresses)), (addresses, expected_addresses)
    assert len(expected_addresses) == len(set(a for a, _, _ in expected_addresses))  # unique
    assert {v for v in vlans.values() if v is not None} <= set(live)
    assert {v for v in public.values() if v is not None} <= set(live)
    running_rows = {
        (r["vap_id"], r["path"]) for r in vms if r["state"] not in ("stopped", "crashed", "dead")
    }
    in_state = {(i, vm["path"]) for i, s in live.items() for vm in s["vms"]}  # type: ignore[index]
    assert running_rows == in_state, (vms, in_state)
    assert {r["state"] for r in vms if (r["vap_id"], r["path"]) in in_state} <= {"running"}
    on_host = {name: sorted(macs) for name, (_, macs) in _domains(run.node).items()}
    assert on_host == expected_domains
    return live  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("phase", "case"), [(phase, case) for phase, n in CASES.items() for case in range(n)]
)
def test_kill_9_then_restart_keeps_allocations_and_untouched_components(
    reference: Reference, phase: str, case: int
) -> None:
    point = _point(reference.bounds[phase], case, CASES[phase])
    run = reference.restore("fresh" if phase == "start" else "started")
    trace = run.root / "trace"
    before_update = _domains(run.node) if phase == "update" else None
    first = _daemon(run, {ENV_AT: str(point), ENV_TRACE: str(trace)})
    try:
        if phase == "update":
            _edit_for_update(run)
            killed = run_cui("update", str(run.acme), env=first.env, timeout=60)
        else:
            killed = run_cui("start", str(run.acme), env=first.env, timeout=60)
        first.proc.wait(timeout=30)
    finally:
        first.kill()
    steps = _steps(trace)
    assert len(steps) == point, f"killed at step {len(steps)}, not {point}: {steps[-3:]}"
    assert killed.returncode != 0, killed.stdout  # the request died with the daemon
    assert first.proc.returncode == -9
    left = _domains(run.node)
    db = _db(run.state)
    try:
        untouched = {
            r["domain"]
            for r in db.execute(
                "SELECT v.domain, v.started, p.updated, p.status FROM vms v "
                "JOIN vaps p ON p.id = v.vap_id WHERE v.state = 'running'"
            )
            if r["domain"] in left
            and (r["status"] != "updating" or (r["started"] or 0) <= r["updated"])
        }
        statuses = [r[0] for r in db.execute("SELECT status FROM vaps")]
    finally:
        db.close()
    if before_update is not None:  # f is not in the update's plan; d only gets new parameters
        for path in ("f", "d"):
            assert f"{PREFIX}-1-{path}" in untouched, (steps[-1], untouched)

    with _daemon(run, {}) as second:
        live = _check_allocations(run)
        leftover = sorted(run.acme.parent.rglob(f"*{BACKUP_SUFFIX}"))
        assert leftover == [], "pre-update copies of data disks left behind"
        now = _domains(run.node)
        for name in untouched:  # the very same domain still runs
            assert now.get(name, ("gone",))[0] == left[name][0], (name, second.output())
        for path in ("f", "d") if before_update else ():  # ... as before the update began
            name = f"{PREFIX}-1-{path}"
            assert now[name][0] == before_update[name][0], (name, second.output())
        # a start is completed and an update completed or undone, per component: never a
        # failed VAP (that is the fall-back when a host does not answer)
        assert "rolled back" not in second.output()
        assert (1 in live) == bool(statuses), (statuses, second.output())
        if statuses in (["starting"], ["updating"]):
            assert "reconciled per component" in second.output()
        other = run.root / "other" / "AcmeGroupware.cvl"
        second.cui("start", str(other), "--name", "other")
        again = _check_allocations(run)
        assert set(again) - set(live) and set(live) <= set(again), (live, again)


def test_kill_hook_is_off_without_its_environment() -> None:
    probe = "from utility.adapters import killpoint as k; k.arm(1); k.step('x'); print(k.enabled())"
    env = {k: v for k, v in os.environ.items() if k not in (ENV_AT, ENV_TRACE)}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        check=True,
    )
    assert done.stdout.strip() == "False"
