"""`cui host drain` under the Groupware VAN on three lab hosts, real VMs, disks copied.

The set-up is the one of test_lab_groupware.py (`groupware_network.started_on_lab`: spread
placement, VXLAN, probes in namespaces). The host running DNS first receives LDAP by `cui move`
(so it runs three VMs and LDAP's data disk travels too), then is drained while a probe on
another host queries DNS once a second. Every VM keeps its MAC and addresses; the records
DNS keeps on its data disk and an LDAP entry added before the moves are there afterwards; the
drained host keeps no domain, volume, VXLAN port or flood entry of the VAN. A drained host
takes no VM until `cui host undrain`; a migration its target refuses (a firewall rule on the
target's migration ports) leaves the VM running, untouched, on its source.

Lost queries: at most LOST_BOUND. Only DNS's own migration can lose one: its pause (libvirt
reports tens of ms) can swallow the query in flight, and until DNS's announcement after the
switch (qemu's RARP) reaches the other hosts, a query can go to the old host; a query waits
one second (`+time=1 +tries=1`), so each of these costs at most one query. One more covers a
TCG guest resuming slowly on a loaded 2-core machine.
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
    in_netns,
    lab_lock,
    lab_session_fixture,  # noqa: F401
)

pytest.importorskip("libvirt")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from groupware_network import (  # noqa: E402
    CUI,
    ROOT_PASSWORD,
    DnsProbe,
    GroupwareLab,
    run,
    started_on_lab,
)

from utility.adapters.host_storage import POOL_ROOT  # noqa: E402

pytestmark = [
    pytest.mark.lab,
    pytest.mark.vm,
    pytest.mark.xdist_group("lab"),
    pytest.mark.timeout(2400),  # six VMs booted under TCG over three hosts, then moved
]
HOSTS = 3
LOST_BOUND = 3
MIGRATION_PORTS = "49152:49215"  # libvirt's migration_port_min..max (the disks' NBD too)


def volumes(host: LabHost) -> list[str]:
    done = in_host(host, ["sh", "-c", f"ls -A {POOL_ROOT}/volumes 2>/dev/null || true"])
    return done.stdout.split()


def domains(host: LabHost) -> list[str]:
    done = in_host(host, ["virsh", "-c", "qemu:///system", "list", "--all", "--name"])
    return done.stdout.split()


def link_kinds(host: LabHost) -> dict[str, str]:
    done = subprocess.run(
        ["ip", "-n", host.netns, "-d", "-j", "link", "show"], capture_output=True, text=True
    )
    return {
        link["ifname"]: link.get("linkinfo", {}).get("info_kind", "")
        for link in json.loads(done.stdout)
    }


def vxlan_fdb(host: LabHost) -> list[dict[str, object]]:
    """A host's FDB entries that point at a remote underlay address: the flood entries the
    utility writes (MAC 00:00:00:00:00:00) and the MACs the VXLAN port learned."""
    done = subprocess.run(
        ["bridge", "-n", host.netns, "-j", "fdb", "show"], capture_output=True, text=True
    )
    return [e for e in json.loads(done.stdout or "[]") if "dst" in e]


def has_alice(g: GroupwareLab) -> bool:
    search = g.namespaces["in"].run(
        [
            *("ldapsearch", "-x", "-LLL", "-H", f"ldap://{g.param('l', 'ethernet0.ip')}"),
            *("-D", "cn=admin,dc=acme,dc=org", "-w", ROOT_PASSWORD),
            *("-b", "ou=people,dc=acme,dc=org", "(uid=alice)", "dn"),
        ]
    )
    return search.returncode == 0 and "uid=alice,ou=people,dc=acme,dc=org" in search.stdout


def macs(g: GroupwareLab) -> dict[str, list[str]]:
    """Component -> the MACs of its running domain, read from its host's libvirt."""
    found = {}
    for path, row in g.status().items():
        xml = run(["virsh", "-c", g.uri_of(str(row["host"])), "dumpxml", str(row["domain"])])
        found[path] = sorted(
            line.split("'")[1] for line in xml.stdout.splitlines() if "<mac address=" in line
        )
    return found


@pytest.fixture(scope="module")
def three(lab_session: object) -> Iterator[Lab]:
    """A lab of three hosts, held (the machine-wide lock) for this module."""
    with lab_lock():
        yield lab_session.ensure(HOSTS)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def groupware(three: Lab) -> Iterator[GroupwareLab]:
    with started_on_lab(three.hosts, keep=ROOT / "artifacts" / "lab-drain") as g:
        yield g


@pytest.fixture(scope="module")
def drained(groupware: GroupwareLab) -> str:
    """The host that ran DNS, drained by the first test."""
    return groupware.hosts_of()["d"]


def test_drain_of_the_dns_host_keeps_dns_answering_and_every_vm_its_data(
    groupware: GroupwareLab, three: Lab, drained: str
) -> None:
    g = groupware
    assert g.cvl is not None
    inside = g.namespaces["in"]
    dns, ldap = g.param("d", "ethernet0.ip"), g.param("l", "ethernet0.ip")
    g.add_mail_user()
    assert has_alice(g)
    inside.fetch(f"http://{dns}:8053/cgi-bin/records?name=kept&ip=192.0.2.7")
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]
    before = g.status()
    before_macs = macs(g)
    if g.hosts_of()["l"] != drained:  # three VMs there, one of them LDAP with its data disk
        moved = json.loads(g.cui("move", str(g.cvl), "l", "--to", drained, "--json"))
        print(f"move of LDAP: {moved}", file=sys.stderr)
        assert moved["to"] == drained and moved["disk_bytes"] > 0, moved
        assert has_alice(g)
    placed = g.hosts_of()
    on_drained = sorted(p for p, h in placed.items() if h == drained)
    print(f"placement {placed}; draining {drained}: {on_drained}", file=sys.stderr)
    assert len(on_drained) >= 3 and {"d", "l"} <= set(on_drained)
    drained_host = g.lab_host(drained)
    assert volumes(drained_host)

    with DnsProbe(inside, dns, "l.acme.org", [ldap]) as probe:
        time.sleep(3)
        began = time.monotonic()
        result = json.loads(g.cui("host", "drain", drained, "--json"))
        seconds = time.monotonic() - began
        time.sleep(3)
    for m in result["moved"]:
        print(
            f"  {m['path']}: {m['from']} -> {m['to']} {m['mode']} {m['seconds']} s, downtime "
            f"{m['downtime_ms']} ms, {m['bytes_copied']} bytes (memory {m['memory_bytes']}, "
            f"disks {m['disks_copied']} {m['disk_bytes']})",
            file=sys.stderr,
        )
    print(
        f"drain of {drained} ({len(result['moved'])} VMs): {seconds:.1f} s; DNS queries sent "
        f"{len(probe.sent)}, lost {len(probe.lost)} at {[round(t, 1) for t in probe.lost]} s "
        f"(drain ran from 3.0 to {3 + seconds:.1f} s)",
        file=sys.stderr,
    )
    assert result["failed"] == [] and result["rehomed"] == [], result
    assert sorted(m["path"] for m in result["moved"]) == on_drained
    for m in result["moved"]:
        assert m["downtime_ms"] is not None and m["bytes_copied"] > 0, m
        assert m["disks_copied"], m
    assert {m["path"]: m["disk_bytes"] > 0 for m in result["moved"] if m["path"] in "dl"} == {
        "d": True,
        "l": True,
    }
    assert len(probe.sent) >= seconds
    assert len(probe.lost) <= LOST_BOUND, probe.lost

    after = g.status()
    assert drained not in {str(r["host"]) for r in after.values()}
    assert all(r["state"] == "running" for r in after.values()), after
    assert {p: r["params"] for p, r in after.items()} == {
        p: r["params"] for p, r in before.items()
    }  # same addresses, VNIs and everything else the VMs were told
    assert macs(g) == before_macs
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]  # DNS's data disk came along
    assert inside.dig(dns, "l.acme.org") == [ldap]
    assert has_alice(g)  # LDAP's too
    assert not [d for d in domains(drained_host) if d.startswith(g.prefix)]
    assert volumes(drained_host) == []
    assert "vxlan" not in link_kinds(drained_host).values()
    moved_macs = {mac for path in on_drained for mac in before_macs[path]}
    for other in three.hosts:
        if other.name == drained:
            continue
        entries = vxlan_fdb(other)
        floods = {e["dst"] for e in entries if e["mac"] == "00:00:00:00:00:00"}
        assert drained_host.ip not in floods, (other.name, entries)  # the utility's flood list
        stale = [e for e in entries if e["mac"] in moved_macs and e["dst"] == drained_host.ip]
        assert stale == [], (other.name, stale)  # learned again where the VMs are now
    text = " ".join(str(r.get("result", "")) for r in g.history())
    assert "bytes copied" in text and "downtime" in text, text[-2000:]


def test_a_drained_host_takes_no_vm_until_undrained(groupware: GroupwareLab, drained: str) -> None:
    g = groupware
    assert g.cvl is not None
    placed = g.hosts_of()
    refused = run([*CUI, "move", str(g.cvl), "d", "--to", drained], env=g.env, check=False)
    assert refused.returncode != 0 and "drained" in refused.stderr, refused
    assert g.hosts_of() == placed
    g.cui("host", "undrain", drained)
    moved = json.loads(g.cui("move", str(g.cvl), "d", "--to", drained, "--json"))
    assert moved["to"] == drained and g.hosts_of()["d"] == drained
    inside = g.namespaces["in"]
    dns = g.param("d", "ethernet0.ip")
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]
    assert inside.dig(dns, "l.acme.org") == [g.param("l", "ethernet0.ip")]


def test_a_migration_the_target_refuses_leaves_the_vm_running_on_its_source(
    groupware: GroupwareLab, three: Lab
) -> None:
    g = groupware
    assert g.cvl is not None
    placed, ids, before = g.hosts_of(), g.domain_ids(), g.status()
    source = placed["w"]
    target = next(h for h in three.hosts if h.name != source)
    domain = str(before["w"]["domain"])
    history = len(g.history())
    rule = ["-p", "tcp", "--dport", MIGRATION_PORTS, "-j", "REJECT"]
    assert in_netns(target.netns, ["iptables", "-I", "INPUT", *rule]).returncode == 0
    try:
        refused = run([*CUI, "move", str(g.cvl), "w", "--to", target.name], env=g.env, check=False)
    finally:
        in_netns(target.netns, ["iptables", "-D", "INPUT", *rule])
    print(f"refused move: {refused.stderr.strip()}", file=sys.stderr)
    assert refused.returncode != 0
    assert f"still runs on {source}" in refused.stderr and "removed" in refused.stderr
    assert g.hosts_of() == placed
    assert g.domain_ids() == ids  # the same domains: nothing restarted
    assert g.status()["w"]["state"] == "running"
    assert domain in domains(g.lab_host(source))
    assert domain not in domains(target)
    assert not [v for v in volumes(target) if v.startswith(domain)]
    assert [v for v in volumes(g.lab_host(source)) if v.startswith(domain)]
    records = g.history()
    assert len(records) == history + 1 and "failed" in str(records[-1]["result"])


def memory_by_host(g: GroupwareLab, hosts: list[str]) -> dict[str, int]:
    """MiB of running VMs per lab host, from `cui status`."""
    used = dict.fromkeys(hosts, 0)
    for row in g.status().values():
        used[str(row["host"])] += int(str(row["memory"]))
    return used


def test_a_rebalance_plan_is_shown_then_carried_out_by_live_migration(
    groupware: GroupwareLab, three: Lab
) -> None:
    """Every VM crowded onto one host with `cui move`; `cui rebalance --dry-run` prints the
    migrations that even memory out and moves nothing; `cui rebalance` carries out exactly
    those, live (same domains, MACs and parameters, DNS and LDAP answering with their data);
    afterwards the plan is empty (a balanced cluster is a fixed point)."""
    g = groupware
    assert g.cvl is not None
    names = [h.name for h in three.hosts]
    crowded = max(names, key=lambda n: (memory_by_host(g, names)[n], n))
    for path, host in sorted(g.hosts_of().items()):
        if host != crowded:
            g.cui("move", str(g.cvl), path, "--to", crowded)
    assert set(g.hosts_of().values()) == {crowded}
    before, ids, macs_before = g.status(), g.domain_ids(), macs(g)
    used_before = memory_by_host(g, names)

    dry = json.loads(g.cui("rebalance", "--dry-run", "--json"))
    print(f"rebalance plan: {dry['lines']}", file=sys.stderr)
    assert dry["moves"] and not dry["applied"] and dry["moved"] == []
    assert all(m["source"] == crowded and m["target"] != crowded for m in dry["moves"])
    assert set(g.hosts_of().values()) == {crowded} and g.domain_ids() == ids  # nothing moved
    shown = run([*CUI, "rebalance", "--dry-run"], env=g.env).stdout
    assert all(line in shown for line in dry["lines"]), shown

    began = time.monotonic()
    done = json.loads(g.cui("rebalance", "--json"))
    print(
        f"rebalance: {len(done['moved'])} migrations in {time.monotonic() - began:.1f} s: "
        f"{[(m['path'], m['to'], m['downtime_ms']) for m in done['moved']]}",
        file=sys.stderr,
    )
    assert done["applied"] and done["failed"] == []
    planned = {(m["key"].rpartition(":")[2], m["target"]) for m in dry["moves"]}
    assert {(m["path"], m["to"]) for m in done["moved"]} == planned
    placed = g.hosts_of()
    assert {(p, placed[p]) for p, _ in planned} == planned
    used_after = memory_by_host(g, names)
    assert max(used_after.values()) < max(used_before.values())
    assert min(used_after.values()) > 0  # every host carries VMs again
    assert json.loads(g.cui("rebalance", "--dry-run", "--json"))["moves"] == []

    after = g.status()
    assert all(r["state"] == "running" for r in after.values()), after
    assert {p: r["domain"] for p, r in after.items()} == {p: r["domain"] for p, r in before.items()}
    assert {p: r["params"] for p, r in after.items()} == {p: r["params"] for p, r in before.items()}
    assert macs(g) == macs_before
    inside = g.namespaces["in"]
    dns = g.param("d", "ethernet0.ip")
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]
    assert inside.dig(dns, "l.acme.org") == [g.param("l", "ethernet0.ip")]
    assert has_alice(g)
