"""The paper's Groupware VAN split over three lab hosts, real VMs (TCG), placement `spread`.

The harness is the one of test_groupware.py (scripts/groupware_network.py): repositories under
gunicorn, stock `git push` with signed tags, `cui utility serve`, `cui start`. Here the daemon
knows only the three lab hosts, each added with `cui host add NAME --uri qemu+ssh://… --underlay
IP`: disks travel into each host's pool over libvirt, the VAN is stretched by VXLAN. The probes
are namespaces plugged into bridges inside the lab hosts' namespaces: "inside" on the VAN's
bridge of a host where DNS does not run, "outside" on the public bridge of the firewall's host
(the public segment is per host, not stretched). After `cui stop`, every host is checked in its
own namespace: no bridge, VXLAN port, FDB entry or volume of the VAP is left.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_fixture import (  # the fixtures are used by name
    Lab,
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
from groupware_network import ROOT_PASSWORD, GroupwareLab, started_on_lab  # noqa: E402

pytestmark = [
    pytest.mark.lab,
    pytest.mark.vm,
    pytest.mark.xdist_group("lab"),
    pytest.mark.timeout(2400),  # the module's setup boots six VMs under TCG over three hosts
]
HOSTS = 3


@pytest.fixture(scope="module")
def before(three: Lab) -> dict[str, dict[str, str]]:
    """Each host's links before the VAP (the lab's own)."""
    return {h.name: links(h) for h in three.hosts}


@pytest.fixture(scope="module")
def groupware(
    three: Lab, before: dict[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GroupwareLab]:
    with started_on_lab(three.hosts, keep=ROOT / "artifacts" / "lab-groupware") as g:
        yield g


def test_spread_puts_the_groupware_on_all_three_hosts(groupware: GroupwareLab, three: Lab) -> None:
    placed = groupware.hosts_of()
    assert set(placed) == {"h", "d", "l", "m", "w", "f"}
    assert set(placed.values()) == {h.name for h in three.hosts}, placed
    assert all(row["state"] == "running" for row in groupware.status().values())
    for host in three.hosts:
        on = [p for p, h in placed.items() if h == host.name]
        kinds = links(host)
        vxlan = [name for name, kind in kinds.items() if kind == "vxlan"]
        assert len(vxlan) == 1, (host.name, kinds)  # one stretched VAN segment
        peers = {str(e["dst"]) for e in vxlan_fdb(host)}
        assert peers == {h.ip for h in three.hosts if h.name != host.name}, (host.name, on)


def test_dns_answers_ldap_to_another_host_and_ldapsearch_crosses(
    groupware: GroupwareLab,
) -> None:
    placed = groupware.hosts_of()
    inside = groupware.namespaces["in"]
    assert inside.host_netns is not None
    probe_host = next(h for h in groupware.lab_hosts if h.netns == inside.host_netns)
    # the queries cross VXLAN: the probe sits on a host with neither DNS nor LDAP (spread puts
    # the six VMs over all three hosts, so such a host exists when d and l are apart)
    assert probe_host.name != placed["d"], placed
    if placed["d"] != placed["l"]:
        assert probe_host.name != placed["l"], placed
    dns, ldap = groupware.param("d", "ethernet0.ip"), groupware.param("l", "ethernet0.ip")
    assert inside.dig(dns, "l.acme.org") == [ldap]
    search = inside.run(
        [
            *("ldapsearch", "-x", "-LLL", "-H", f"ldap://{ldap}"),
            *("-D", "cn=admin,dc=acme,dc=org", "-w", ROOT_PASSWORD),
            *("-b", "dc=acme,dc=org", "(objectClass=organizationalUnit)", "dn"),
        ]
    )
    assert search.returncode == 0, search.stderr
    assert "ou=people,dc=acme,dc=org" in search.stdout
    wrong = inside.run(
        [
            *("ldapsearch", "-x", "-LLL", "-H", f"ldap://{ldap}"),
            *("-D", "cn=admin,dc=acme,dc=org", "-w", "not the password", "-b", "dc=acme,dc=org"),
        ]
    )
    assert wrong.returncode == 49  # invalid credentials: the real LDAP answered


def test_the_web_page_through_the_firewall_from_its_public_segment(
    groupware: GroupwareLab,
) -> None:
    public = groupware.param("f", "ethernet1.ip")
    outside = groupware.namespaces["out"]
    page = outside.fetch(f"http://{public}/")
    assert "<title>Acme Widgets</title>" in page and "acme.org" in page, page[:500]
    assert not outside.connects(public, 8053)  # not a service: the firewall drops it
    placed = groupware.hosts_of()
    # the firewall forwards port 80 to Web over the VAN: across hosts with this placement
    assert placed["f"] != placed["w"], placed
    outside_host = next(h for h in groupware.lab_hosts if h.netns == outside.host_netns)
    assert outside_host.name == placed["f"]  # the public segment is the firewall's host's own


def test_dns_update_restarts_only_dns_with_its_data_disk_kept(groupware: GroupwareLab) -> None:
    inside = groupware.namespaces["in"]
    dns = groupware.param("d", "ethernet0.ip")
    written = inside.fetch(f"http://{dns}:8053/cgi-bin/records?name=kept&ip=192.0.2.7")
    assert inside.dig(dns, "appliance.acme.org", "TXT") == ['"collective DNS 1"'], written
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]
    ids, placed = groupware.domain_ids(), groupware.hosts_of()
    count = len(groupware.history())
    groupware.push("DNS", "DNS-v2", "DNS 2: data format 2")
    record = groupware.wait_history(count + 1, timeout=2 * groupware.ready_timeout)
    assert record["result"] == "applied", record
    after = groupware.domain_ids()
    assert {p for p in ids if after[p] != ids[p]} == {"d"}, (ids, after)
    assert groupware.hosts_of() == placed
    assert inside.dig(dns, "appliance.acme.org", "TXT") == ['"collective DNS 2"']
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]  # the data disk was kept
    assert inside.dig(dns, "l.acme.org") == [groupware.param("l", "ethernet0.ip")]


def test_stop_leaves_nothing_on_any_host(
    groupware: GroupwareLab, three: Lab, before: dict[str, dict[str, str]]
) -> None:
    assert groupware.cvl is not None
    for ns in list(groupware.namespaces.values()):  # the probes' veths are ours, not the VAP's
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
    groupware.cui("stop", str(groupware.cvl))
    for host in three.hosts:
        assert links(host) == before[host.name], host.name
        assert vxlan_fdb(host) == [], host.name
        assert volumes(host) == [], host.name
        domains = in_host(host, ["virsh", "-c", "qemu:///system", "list", "--all", "--name"])
        assert groupware.prefix not in domains.stdout, host.name
