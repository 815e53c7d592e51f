"""A lab host under the Groupware VAN dies; the VAN is whole again on the other hosts.

The Groupware of test_lab_groupware.py (scripts/groupware_network.py: gunicorn, git push with
signed tags, `cui utility serve`, `cui start`) runs spread over three lab hosts, with data-disk
backups every BACKUP_INTERVAL seconds and the default failure grace period (30 s). A record is
written to DNS's data disk and a backup taken after it; then the host running DNS dies: every
qemu process in its namespaces is SIGKILLed, then its libvirtd (`multihost_lab.kill_host`;
sshd stays, so connections are refused at once, as from a host whose libvirtd crashed). The
utility must call the host failed after the grace period, restart its VMs on the two other
hosts in dependency order with the same MACs and addresses, DNS's data disk from the latest
backup (DNS answers the record; `cui status` says which backup and how old), the VXLAN flood
lists following the VMs, history recording it. Then libvirtd is started again on the dead
host: it is fenced (nothing of the VAP left running there) before it is `up`, and no VM of the
VAP runs twice. `cui stop` at the end leaves nothing on any host.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_fixture import (  # the fixtures are used by name
    Lab,
    LabHost,
    in_host,
    lab_session_fixture,  # noqa: F401
    links,
    three_fixture,  # noqa: F401
    volumes,
    vxlan_fdb,
)

pytest.importorskip("libvirt")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import multihost_lab  # noqa: E402
from groupware_network import GroupwareLab, started_on_lab  # noqa: E402

pytestmark = [
    pytest.mark.lab,
    pytest.mark.vm,
    pytest.mark.xdist_group("lab"),
    pytest.mark.timeout(2400),  # six VMs under TCG over three hosts, then two restarted
]
BACKUP_INTERVAL = 20  # seconds: a backup soon after the record is written
GRACE = 30.0  # the default `--host-grace`
REQUIRES = {"l": {"h", "d"}, "m": {"h", "d", "l"}, "w": {"h", "d", "l"}}  # Groupware.cvl


@pytest.fixture(scope="module")
def before(three: Lab) -> dict[str, dict[str, str]]:
    """Each host's links before the VAP (the lab's own)."""
    return {h.name: links(h) for h in three.hosts}


@pytest.fixture(scope="module")
def groupware(three: Lab, before: dict[str, dict[str, str]]) -> Iterator[GroupwareLab]:
    keep = ROOT / "artifacts" / "lab-failover"
    serve = ("--backup-interval", str(BACKUP_INTERVAL), "--host-grace", str(GRACE))
    try:
        with started_on_lab(three.hosts, keep=keep, serve_args=serve) as g:
            yield g
    finally:
        for host in three.hosts:  # a test that failed half-way leaves no host without libvirtd
            if not multihost_lab.is_running(host.pids["libvirtd"]):
                multihost_lab.revive_libvirtd(host)


def identities(g: GroupwareLab) -> dict[str, list[tuple[str, str, str]]]:
    """Component -> its interfaces (name, MAC, IP)."""
    return {
        path: [(str(i["name"]), str(i["mac"]), str(i["ip"])) for i in row["interfaces"]]  # type: ignore[attr-defined]
        for path, row in g.status().items()
    }


def running_domains(host: LabHost, prefix: str) -> list[str]:
    done = in_host(host, ["virsh", "-c", "qemu:///system", "list", "--name"])
    assert done.returncode == 0, done.stderr
    return [d for d in done.stdout.split() if d.startswith(prefix)]


def host_health(g: GroupwareLab) -> dict[str, str]:
    return {
        str(h["name"]): str(h.get("health", "up"))
        for h in json.loads(g.cui("host", "list", "--json"))
    }


def wait_for(what: str, check, timeout: float, every: float = 1.0):  # type: ignore[no-untyped-def]
    """Poll `check` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def fresh_backup(g: GroupwareLab, after: float) -> float | None:
    """The time of DNS's latest vdb backup when it was taken after `after`."""
    taken = g.status()["d"].get("backups", {}).get("vdb")  # type: ignore[attr-defined]
    return float(taken) if taken and float(taken) > after else None


def boots_since(g: GroupwareLab, since: float) -> dict[str, dict[str, float]]:
    """Per component, the first time of each boot event (booting, parameters sent, ready) at or
    after `since` (epoch)."""
    from utility.adapters.store import Store

    out: dict[str, dict[str, float]] = {}
    for e in Store(g.work / "state").events():
        if e["kind"] == "boot" and float(str(e["at"])) >= since:
            path, _, what = str(e["text"]).partition(": ")
            out.setdefault(path, {}).setdefault(what, float(str(e["at"])))
    return out


def all_ready_elsewhere(g: GroupwareLab, dead: str) -> dict[str, dict[str, object]] | None:
    rows = g.status()
    if all(r["state"] == "running" and r["host"] != dead for r in rows.values()):
        return rows
    return None


def test_a_dead_host_s_vms_run_again_elsewhere_and_it_is_fenced_on_return(
    groupware: GroupwareLab, three: Lab, before: dict[str, dict[str, str]]
) -> None:
    g = groupware
    placed = g.hosts_of()
    assert set(placed.values()) == {h.name for h in three.hosts}, placed  # spread
    victim = g.lab_host(placed["d"])
    moving = sorted(p for p, h in placed.items() if h == victim.name)
    staying = {p: h for p, h in placed.items() if h != victim.name}
    before_ids = identities(g)
    inside = g.namespaces["in"]
    assert inside.host_netns != victim.netns  # the probe's host survives
    dns = g.param("d", "ethernet0.ip")

    # a record on DNS's data disk, then a backup taken after it
    written_at = time.time()
    inside.fetch(f"http://{dns}:8053/cgi-bin/records?name=kept&ip=192.0.2.7")
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]
    backed_up = wait_for(
        "a backup of d vdb after the record",
        lambda: fresh_backup(g, written_at),
        3 * BACKUP_INTERVAL + 60,
    )
    history_before = len(g.history())

    # the host dies
    died = time.time()
    killed = multihost_lab.kill_host(victim)
    assert len(killed) == len(moving), (killed, moving)
    rows = wait_for(
        "every component running on the other hosts",
        lambda: all_ready_elsewhere(g, victim.name),
        GRACE + 600,
        every=0.5,
    )
    whole = time.time() - died
    print(
        f"lab failover: {moving} on {victim.name} READY elsewhere {whole:.1f} s after its "
        f"death (grace {GRACE:.0f} s)",
        file=sys.stderr,
    )

    health = host_health(g)
    assert health[victim.name] == "failed", health
    assert {h for n, h in health.items() if n != victim.name} == {"up"}, health
    # the others did not move; the moved ones kept their names and addresses
    assert {p: h for p, h in g.hosts_of().items() if p in staying} == staying
    assert identities(g) == before_ids
    # dependency order: a moved component got its parameters only once what it requires was
    # READY (vacuous when the dead host held no provider with its dependent: spread has put DNS
    # beside the firewall in every run so far)
    boots = boots_since(g, died)
    assert set(boots) == set(moving), boots
    for path in moving:
        for needed in REQUIRES.get(path, set()) & set(moving):
            assert boots[needed]["ready"] <= boots[path]["parameters sent"], boots
    # DNS's data disk came from the latest backup, and status says which and how old
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"], [vxlan_fdb(h) for h in three.hosts]
    assert inside.dig(dns, "l.acme.org") == [g.param("l", "ethernet0.ip")]
    source = str(rows["d"]["restored"]["source"])  # type: ignore[index]
    taken = time.strftime("%Y%m%dT%H%M%S", time.gmtime(backed_up))
    assert source.startswith(f"vdb: backup {taken}"), (source, backed_up)
    assert "s old)" in source
    text = g.cui("status", str(g.cvl))
    assert "restored after its host failed; data: vdb: backup" in text, text
    # history: the failure, then the restart elsewhere
    records = g.history()[history_before:]
    kinds = [r["trigger"] for r in records]
    assert "host-failed" in kinds, records
    assert any(str(r["result"]).startswith("restarted ") for r in records), records
    # VXLAN: the surviving hosts flood only to each other
    alive = [h for h in three.hosts if h is not victim]
    for host in alive:
        peers = {str(e["dst"]) for e in vxlan_fdb(host)}
        assert peers == {h.ip for h in alive if h is not host}, (host.name, peers)
    # every VM of the VAP runs exactly once
    everywhere = [d for h in alive for d in running_domains(h, g.prefix)]
    assert sorted(everywhere) == sorted(str(r["domain"]) for r in rows.values())

    # the host comes back: fenced before it is up, nothing of the VAP runs there
    multihost_lab.revive_libvirtd(victim)
    back = time.time()
    wait_for(f"{victim.name} up again", lambda: host_health(g)[victim.name] == "up", 120)
    fenced = time.time() - back
    assert running_domains(victim, g.prefix) == []
    probes = {ns.host_end for ns in g.namespaces.values()}  # the test's own veths, not the VAP's
    left = {k: v for k, v in links(victim).items() if k not in probes}
    assert left == before[victim.name]  # the VAP's bridges and VXLAN ports there are gone
    assert vxlan_fdb(victim) == []
    assert volumes(victim) == []  # the stale VMs' overlays and data disks deleted from its pool
    events = [str(e["text"]) for e in _events(g)]
    assert f"host {victim.name}: failed -> fencing" in events, events[-20:]
    assert any(t.startswith(f"host {victim.name} fenced:") for t in events), events[-20:]
    everywhere = [d for h in three.hosts for d in running_domains(h, g.prefix)]
    assert len(everywhere) == len(set(everywhere)) == len(rows)
    assert g.hosts_of() == {**staying, **{p: g.hosts_of()[p] for p in moving}}
    assert all(r["state"] == "running" for r in g.status().values())
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]  # DNS still answers after the fence
    print(
        f"lab failover: {victim.name} fenced and up {fenced:.1f} s after its libvirtd restarted",
        file=sys.stderr,
    )


def test_stop_leaves_nothing_on_any_host(
    groupware: GroupwareLab, three: Lab, before: dict[str, dict[str, str]]
) -> None:
    for ns in list(groupware.namespaces.values()):
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
    groupware.cui("stop", str(groupware.cvl))
    for host in three.hosts:
        assert links(host) == before[host.name], host.name
        assert vxlan_fdb(host) == [], host.name
        assert volumes(host) == [], host.name
        assert running_domains(host, groupware.prefix) == [], host.name


def _events(g: GroupwareLab) -> list[dict[str, object]]:
    from utility.adapters.store import Store

    return Store(g.work / "state").events()
