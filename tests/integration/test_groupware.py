"""The paper's Groupware network on real VMs (qemu under TCG through libvirtd), run only through
the public interfaces: appliances published with stock `git push` and SSH-signed tags to a real
gunicorn repository server, `cui utility serve` (require-signed, subscribed to the DNS
repository), `cui start` of the user's AcmeGroupware.

One Groupware is started for the whole module (`scripts/groupware_network.py` does the set-up)
and the tests below run against it: boot order and services, a resent parameter, and (in one test,
since their order matters) a bad DNS release rolled back (data disk as before) followed by an
automatic update to DNS v2 (record kept).
The host talks to the appliances only from two network namespaces the harness plugs into the
utility's own bridges ("inside" on the VAN, "outside" on the public segment in front of the
firewall).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from groupware_network import (  # noqa: E402
    FIGURE5,
    MAIL_USER,
    ROOT_PASSWORD,
    SECRETS,
    GroupwareLab,
    Namespace,
    lab,
)

pytestmark = [pytest.mark.vm, pytest.mark.xdist_group("groupware")]
READY_TIMEOUT = 120.0  # per VM; a quiet TCG boot to READY is ~15 s, the bad release waits it out


@pytest.fixture(scope="module")
def groupware() -> Iterator[GroupwareLab]:
    """AcmeGroupware running on qemu:///system with both probe namespaces plugged in."""
    try:
        libvirt.open("qemu:///system").close()
    except libvirt.libvirtError as exc:  # pragma: no cover - only where libvirtd is missing
        pytest.skip(f"qemu:///system is not usable here: {exc}")
    with lab(keep=ROOT / "artifacts" / "guest-consoles") as made:
        made.ready_timeout = READY_TIMEOUT
        made.build()
        made.serve()
        made.publish_all()
        made.start_utility()
        made.write_user_files()
        made.start()
        made.plug_both()
        yield made


def ip(lab_: GroupwareLab, component: str, iface: str = "ethernet0") -> str:
    return lab_.param(component, f"{iface}.ip")


def first(events: list[tuple[float, str, str]], name: str) -> float:
    return min(t for t, e, _ in events if e == name)


def test_boots_in_dependency_order_and_every_service_answers(groupware: GroupwareLab) -> None:
    g = groupware
    vap = g.vap()
    assert vap["status"] == "running"
    assert {c: row["state"] for c, row in g.status().items()} == dict.fromkeys("dfhlmw", "running")
    assert {c: row["version"] for c, row in g.status().items()} == dict.fromkeys("dfhlmw", "1")

    # Order on the host's clock (the utility's boot events), with the default overlapped boot
    # order: LDAP got its parameters (so started its service) only after DHCP and DNS said
    # READY, the web server and Mail only after LDAP; yet their domains were created while those
    # were still coming up (the boots overlapped). Guest console clocks are not used: under TCG
    # on a loaded host they drift apart by seconds.
    t = g.boot_times()
    ready = {c: t[c]["ready"] for c in "hdlmfw"}
    params = {c: t[c]["parameters sent"] for c in "hdlmfw"}
    booted = {c: t[c]["booting"] for c in "hdlmfw"}
    assert max(ready["h"], ready["d"]) <= params["l"], (ready, params)
    assert ready["l"] <= params["w"] and ready["l"] <= params["m"], (ready, params)
    assert booted["l"] < max(ready["h"], ready["d"]) and booted["w"] < ready["l"], (ready, booted)
    # The guests saw the same order: each console shows BOOT, PARAMS, READY in that order.
    for c in "hdlmfw":
        g.wait_event(c, "ready")  # the console lags the channel
        seen = [e for _, e, _ in g.events(c) if e in ("boot", "params", "ready")]
        assert seen[:3] == ["boot", "params", "ready"], (c, seen)

    inside, outside = g.namespaces["in"], g.namespaces["out"]
    # DNS: the DNS appliance answers with the address the utility gave LDAP.
    assert inside.dig(ip(g, "d"), "l.acme.org") == [ip(g, "l")]
    assert inside.dig(ip(g, "d"), "w.acme.org") == [ip(g, "w")]
    # LDAP: root DN derived from `domain`; the sensitive password binds; a wrong one does not.
    search = inside.run(
        [
            "ldapsearch",
            "-x",
            "-LLL",
            "-H",
            f"ldap://{ip(g, 'l')}",
            "-D",
            "cn=admin,dc=acme,dc=org",
            "-w",
            ROOT_PASSWORD,
            "-b",
            "dc=acme,dc=org",
            "(objectClass=organizationalUnit)",
            "ou",
        ]
    )
    assert search.returncode == 0, search.stderr
    assert "dn: ou=people,dc=acme,dc=org" in search.stdout
    wrong = inside.run(
        [
            "ldapsearch",
            "-x",
            "-H",
            f"ldap://{ip(g, 'l')}",
            "-D",
            "cn=admin,dc=acme,dc=org",
            "-w",
            "wrong",
            "-b",
            "dc=acme,dc=org",
        ]
    )
    assert wrong.returncode == 49  # invalid credentials
    for component in "hdlmfw":
        console = (g.vm_dir(component) / "console.log").read_text(errors="replace")
        for secret in SECRETS.values():
            assert secret not in console

    # The firewall's public address, from outside: exactly the configured services get through.
    public = ip(g, "f", "ethernet1")
    page = outside.fetch(f"http://{public}/")
    assert "<title>Acme Widgets</title>" in page and "acme.org" in page
    assert outside.dig(public, "l.acme.org") == [ip(g, "l")]  # 53/udp is a service
    ldap_through = outside.run(
        [
            "ldapsearch",
            "-x",
            "-LLL",
            "-H",
            f"ldap://{public}",
            "-b",
            "dc=acme,dc=org",
            "(ou=people)",
            "dn",
        ]
    )
    assert "dn: ou=people,dc=acme,dc=org" in ldap_through.stdout, ldap_through.stderr
    assert inside.connects(ip(g, "d"), 8053)  # DNS's record admin is up on the VAN...
    assert not outside.connects(public, 8053)  # ...but it is not a service: dropped
    assert not outside.connects(public, 22)
    assert not outside.connects(public, 8440)  # the CA signs only on the VAN
    assert not outside.connects(ip(g, "w"), 80)  # no route from outside but the firewall


def test_resent_forwarders_reconfigure_dns_without_a_reboot(groupware: GroupwareLab) -> None:
    g = groupware
    ids = g.domain_ids()
    boots = len(g.wait_event("d", "boot"))
    readies = len(g.wait_event("d", "ready"))
    uptime = float(g.status()["d"]["uptime"])  # type: ignore[arg-type]
    g.set_forwarders("192.0.2.53", "192.0.2.54")
    result = g.update()
    assert any(line.startswith("↻ d") for line in result["lines"]), result  # type: ignore[attr-defined]
    g.wait_event("d", "ready", readies + 1)
    status = [d for _, e, d in g.events("d") if e == "status"][-1]
    assert "forwarders=192.0.2.53,192.0.2.54" in status
    assert len(g.wait_event("d", "boot")) == boots, "resent parameters must not reboot DNS"
    assert g.domain_ids() == ids  # the same domains, DNS's included
    assert float(g.status()["d"]["uptime"]) > uptime  # type: ignore[arg-type]


def add_record(inside: Namespace, dns_ip: str) -> None:
    answer = inside.fetch(f"http://{dns_ip}:8053/cgi-bin/records?name=kept&ip=192.0.2.7")
    assert "added kept 192.0.2.7" in answer


def others(ids: dict[str, int]) -> dict[str, int]:
    return {c: i for c, i in ids.items() if c != "d"}


def test_a_bad_release_is_rolled_back_then_v2_is_applied_keeping_the_data_disk(
    groupware: GroupwareLab,
) -> None:
    """One test, because the order is the point: the bad release must meet a format-1 data disk
    (after v2 migrates it, the bad image would refuse it at once instead of never saying READY),
    and the record written before both updates must survive the rollback and then v2."""
    _bad_release_is_rolled_back(groupware)
    _v2_is_applied_automatically_and_keeps_the_data_disk(groupware)


def _bad_release_is_rolled_back(groupware: GroupwareLab) -> None:
    g = groupware
    inside = g.namespaces["in"]
    dns = ip(g, "d")
    add_record(inside, dns)  # on the data disk: the rollback must bring it back as it was
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]
    count = len(g.history())
    before = g.domain_ids()
    pushed = g.push("DNS", "DNS-bad", "DNS 2: its health check never passes")
    record = g.wait_history(count + 1, timeout=3 * READY_TIMEOUT)
    assert record["trigger"] == "push", record
    result = str(record["result"])
    assert "did not become ready" in result and "rolled back to v1" in result, result
    assert float(record["at"]) - pushed > READY_TIMEOUT  # type: ignore[arg-type]
    bad_boot = [d for _, e, d in g.events("d") if e == "boot"]
    status = g.status()
    assert status["d"]["version"] == "1" and status["d"]["state"] == "running"
    assert others(g.domain_ids()) == others(before), "only DNS was touched"
    g.wait_event("d", "ready")
    assert any("version=1" in d for d in bad_boot), bad_boot
    assert inside.dig(dns, "appliance.acme.org", "TXT") == ['"collective DNS 1"']
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]
    assert inside.dig(dns, "l.acme.org") == [ip(g, "l")]


def _v2_is_applied_automatically_and_keeps_the_data_disk(groupware: GroupwareLab) -> None:
    g = groupware
    inside = g.namespaces["in"]
    dns = ip(g, "d")
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]  # written before this update
    assert inside.dig(dns, "appliance.acme.org", "TXT") == ['"collective DNS 1"']
    before = g.domain_ids()
    count = len(g.history())
    pushed = g.push("DNS", "DNS-v2", "DNS 3: data format 2")
    record = g.wait_history(count + 1, timeout=2 * READY_TIMEOUT)
    assert record["trigger"] == "push" and record["result"] == "applied", record
    assert record["versions"] == {"d": ["1", "3"]}
    assert float(record["at"]) - pushed < READY_TIMEOUT  # type: ignore[arg-type]
    after = g.domain_ids()
    assert after["d"] != before["d"]
    assert others(after) == others(before), "only DNS restarts"
    assert g.status()["d"]["version"] == "3"
    g.wait_event("d", "ready")
    assert any("1 -> 2" in d for _, e, d in g.events("d") if e == "migrate")
    assert inside.dig(dns, "appliance.acme.org", "TXT") == ['"collective DNS 2"']
    assert inside.dig(dns, "kept.acme.org") == ["192.0.2.7"]  # still there after the update
    assert inside.dig(dns, "l.acme.org") == [ip(g, "l")]


# -- the Mail appliance, certificates from the VAN's CA, the 14 parameters --------------------


def test_the_user_file_sets_exactly_the_14_parameters_of_figure_5(groupware: GroupwareLab) -> None:
    """AcmeGroupware assigns 10 values and the user agent holds the 4 sensitive ones; nothing
    else was given, yet all six appliances run (checked above) and got what they need."""
    import re

    assert groupware.cvl is not None
    text = groupware.cvl.read_text().split("*/", 1)[1]
    assigned = set(re.findall(r"^\s*([a-z]+)\s*=", text, re.M))
    paper = FIGURE5
    assert assigned | set(SECRETS) == paper and not assigned & set(SECRETS)
    assert len(paper) == 14
    listed = groupware.cui("agent", "list")
    assert all(key in listed for key in SECRETS)
    # rootpw reached every appliance's channel and only its hash a file: the agent says so.
    for component in "hdlmfw":
        keys = [d for _, e, d in groupware.events(component) if e == "params"][0]
        assert "rootpw" in keys, (component, keys)


def test_ca_certificate_is_published_by_the_web_appliance(
    groupware: GroupwareLab, tmp_path: Path
) -> None:
    ca = groupware.ca_certificate()
    text = ca.read_text()
    assert text.startswith("-----BEGIN CERTIFICATE-----")
    import ssl

    # HTTPS through the firewall: the chain verifies against that CA for w.acme.org.
    outside = groupware.namespaces["out"]
    public = ip(groupware, "f", "ethernet1")
    probe = (
        "import socket,ssl,sys\n"
        "ctx=ssl.create_default_context(cafile=sys.argv[2])\n"
        "s=ctx.wrap_socket(socket.create_connection((sys.argv[1],443),timeout=20),"
        "server_hostname='w.acme.org')\n"
        "s.sendall(b'GET / HTTP/1.0\\r\\nHost: w.acme.org\\r\\n\\r\\n')\n"
        "print(dict(x[0] for x in s.getpeercert()['subject'])['organizationName'])\n"
        "data=b''\n"
        "try:\n"
        "    while chunk := s.recv(65536): data += chunk\n"
        "except ssl.SSLEOFError: pass\n"
        "sys.stdout.write(data.decode())\n"
    )
    done = outside.run([sys.executable, "-c", probe, public, str(ca)])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Acme Widgets\n") and "<title>Acme Widgets</title>" in done.stdout
    # A client that does not trust the VAN's CA refuses the same server.
    untrusted = outside.run(
        [sys.executable, "-c", probe.replace("cafile=sys.argv[2]", ""), public, str(ca)]
    )
    assert untrusted.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    assert ssl.PEM_cert_to_DER_cert(text)  # a well-formed certificate


def test_ldaps_serves_a_certificate_from_the_vans_ca(
    groupware: GroupwareLab, tmp_path: Path
) -> None:
    g = groupware
    ca = g.ca_certificate()
    search = g.namespaces["in"].run(
        [
            "env",
            f"LDAPTLS_CACERT={ca}",
            "LDAPTLS_REQCERT=demand",
            "ldapsearch",
            "-x",
            "-LLL",
            "-H",
            f"ldaps://{ip(g, 'l')}",
            "-b",
            "dc=acme,dc=org",
            "(ou=people)",
            "dn",
        ]
    )
    assert "dn: ou=people,dc=acme,dc=org" in search.stdout, search.stderr


def test_mail_from_outside_is_read_back_over_imaps_and_pop3s_and_kept_by_a_v2_update(
    groupware: GroupwareLab, tmp_path: Path
) -> None:
    g = groupware
    g.ca_certificate()
    g.add_mail_user()
    sent = g.mail("send", MAIL_USER[1], "first through the firewall")
    assert sent == {"refused": {}}, sent
    g.wait_mail("imaps", "first through the firewall")
    assert "first through the firewall" in g.mail("pop3s", MAIL_USER[1])["subjects"]  # type: ignore[operator]
    wrong = g.mail("imaps", "not alice's password")
    assert "AUTHENTICATIONFAILED" in str(wrong.get("error")), wrong
    # submission (587): STARTTLS, then a login with the user's LDAP password
    assert g.mail("submit", MAIL_USER[1], "submitted") == {"refused": {}}
    g.wait_mail("imaps", "submitted")
    # a client trusting another CA refuses the server: the chain really is the VAN's
    other = tmp_path / "other-ca.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(tmp_path / "other.key"),
            "-out",
            str(other),
            "-days",
            "1",
            "-subj",
            "/CN=Another CA",
        ],
        check=True,
        capture_output=True,
    )
    refused = g.mail("imaps", MAIL_USER[1], cafile=other)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.get("error")), refused

    # Mail v2: `cui update` restarts only Mail, and the mailbox (data disk) is still there.
    cert = g.mail("imaps", MAIL_USER[1])["cert"]
    before = g.domain_ids()
    g.push("Mail", "Mail-v2", "Mail 2")
    result = g.update()
    assert any(line.startswith("~ m") for line in result["lines"]), result  # type: ignore[attr-defined]
    after = g.domain_ids()
    assert after["m"] != before["m"]
    assert {c: i for c, i in after.items() if c != "m"} == {
        c: i for c, i in before.items() if c != "m"
    }
    assert g.status()["m"]["version"] == "2"
    subjects = g.wait_mail("imaps", "submitted")
    assert "first through the firewall" in subjects, subjects
    assert g.mail("imaps", MAIL_USER[1])["cert"] == cert, "the certificate was kept"
