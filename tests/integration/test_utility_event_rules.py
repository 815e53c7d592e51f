"""Publish events are exact (issue 12 item 9), in-process over the real API app.

A real repository (v1 running, then v2 and v3 published), a VAP on a libvirt test-driver host,
the events endpoint through Flask's test client. Each hostile event is built here with the
correct HMAC: a replayed id, a stale or future timestamp, a version the repository lacks (v999),
a wrong commit. Each is refused (409) and the VAP's version and history are unchanged; the one
good event installs exactly the version it names (v2), not the latest (v3). Replays stay refused
after a restart (the ids are in the state database).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

from reposerver.client import open_repository
from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import sample_appliance, write_pattern
from utility.adapters.simulation import base_image, publisher_domain_xml, simulated_host_uri
from utility.service.manager import Caller, ClusterManager
from utility.web.api import EVENTS_PATH, create_app

SHARED = b"event-rules-secret"
ADMIN = Caller("root", "admin")


def signed(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    mac = hmac.new(SHARED, raw, hashlib.sha256).hexdigest()
    return raw, {"X-Collective-Signature": f"sha256={mac}", "Content-Type": "application/json"}


def event(url: str, version: int, commit: str, **changes: Any) -> dict[str, Any]:
    return {
        "repository": url,
        "version": version,
        "tag": f"v{version}",
        "commit": commit,
        "signer": None,
        "id": secrets.token_hex(16),
        "timestamp": time.time(),
        **changes,
    }


def office(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A DNS repository at v1, the DNS source directory, and a user CVL tracking DNS."""
    dns_repo = Repository.create(tmp_path / "repos" / "DNS")
    src = tmp_path / "src"
    dns_cvl = sample_appliance(src, "DNS")
    publish(dns_repo.path, dns_cvl)
    ldap = tmp_path / "ldap"
    ldap.mkdir()
    (ldap / "LDAP.cvl").write_text('LDAP extends VMAppliance { vm = "l.vmx"; requires = "DNS"; }')
    (ldap / "l.vmx").write_text(publisher_domain_xml("ldap", 64))
    base_image(ldap / "system.qcow2")
    user = tmp_path / "user"
    user.mkdir()
    cvl = user / "Office.cvl"
    cvl.write_text(
        f'import {{ url => "file:{dns_repo.path}", cvl => "DNS.cvl" }} DNS;\n'
        f'import {{ url => "file:{ldap}", cvl => "LDAP.cvl" }} LDAP;\n'
        'Office extends VANAppliance {\n  DNS d;\n  LDAP l;\n  d.domain = "acme.org";\n'
        '  vanIF = "l.ethernet0";\n}\n'
    )
    return dns_repo.path, dns_cvl, cvl


def test_events_install_exactly_the_named_version_once(tmp_path: Path) -> None:
    repo_path, dns_cvl, cvl = office(tmp_path)
    state = tmp_path / "state"
    manager = ClusterManager(state)
    manager.add_host(ADMIN, "h1", simulated_host_uri(tmp_path, "h1"), 1 << 30, 8)
    manager.add_vlans(ADMIN, "100-101")
    manager.add_public_ips(ADMIN, "192.0.2.1-192.0.2.2")
    manager.start(ADMIN, str(cvl))
    for fill in (0x42, 0x43):  # v2 and v3: the latest is v3
        write_pattern(dns_cvl.parent / "root.qcow2", fill, "2M", "64k")
        publish(repo_path, dns_cvl)
    url = repo_path.as_uri()
    repo = open_repository(url)
    assert repo.latest() == 3
    app = create_app(manager, require_token=True, events_secret=SHARED)
    client, updater = app.test_client(), app.config["AUTO_UPDATER"]

    def post(body: dict[str, Any]) -> tuple[int, str]:
        raw, headers = signed(body)
        answer = client.post(EVENTS_PATH, data=raw, headers=headers)
        updater.wait()
        return answer.status_code, str((answer.get_json() or {}).get("error", ""))

    def dns_version() -> str:
        vap = manager.status(ADMIN, str(cvl))[0]
        return {c["path"]: c for c in vap["components"]}["d"]["version"]

    assert dns_version() == "1"
    good = event(url, 2, repo.commit(2))
    assert post(good)[0] == 202
    assert dns_version() == "2"  # exactly v2, never the latest v3
    history = manager.history(ADMIN, str(cvl))
    assert [(h["trigger"], h["versions"]) for h in history] == [("push", {"d": ["1", "2"]})]

    hostile = {
        "replayed id": good,
        "v999": event(url, 999, "0" * 40),
        "wrong commit": event(url, 3, repo.commit(1)),
        "stale": event(url, 3, repo.commit(3), timestamp=time.time() - 601),
        "future": event(url, 3, repo.commit(3), timestamp=time.time() + 120),
    }
    words = {
        "replayed id": "already received",
        "v999": "does not have",
        "wrong commit": "commit",
        "stale": "old",
        "future": "future",
    }
    for name, body in hostile.items():
        status, error = post(body)
        assert status == 409 and words[name] in error, (name, status, error)
        assert "0" * 40 not in error or name == "v999"
        assert dns_version() == "2", name
        assert manager.history(ADMIN, str(cvl)) == history, name
    manager.close()

    restarted = ClusterManager(state)  # the seen ids are durable
    again = create_app(restarted, require_token=True, events_secret=SHARED).test_client()
    raw, headers = signed(good)
    answer = again.post(EVENTS_PATH, data=raw, headers=headers)
    assert answer.status_code == 409 and "already received" in answer.get_json()["error"]
    assert restarted.history(ADMIN, str(cvl)) == history
    restarted.close()


def test_under_require_signed_the_named_version_is_verified_not_the_latest(tmp_path: Path) -> None:
    from tests.integration.test_utility_trust import ssh_key

    trusted = ssh_key(tmp_path / "trusted")
    ssh_key(tmp_path / "stranger")
    repo_path, dns_cvl, cvl = office(tmp_path)  # v1 unsigned: start before require-signed
    state = tmp_path / "state"
    manager = ClusterManager(state)
    manager.add_host(ADMIN, "h1", simulated_host_uri(tmp_path, "h1"), 1 << 30, 8)
    manager.add_vlans(ADMIN, "100-101")
    manager.add_public_ips(ADMIN, "192.0.2.1-192.0.2.2")
    manager.start(ADMIN, str(cvl))
    url = repo_path.as_uri()
    manager.set_trust(ADMIN, url, True)
    manager.trust_key(ADMIN, url, trusted)
    for fill, key in ((0x42, "stranger"), (0x43, "trusted")):  # v2 untrusted, v3 trusted
        write_pattern(dns_cvl.parent / "root.qcow2", fill, "2M", "64k")
        publish(repo_path, dns_cvl, sign=str(tmp_path / key))
    repo = open_repository(url)
    app = create_app(manager, require_token=True, events_secret=SHARED)
    client, updater = app.test_client(), app.config["AUTO_UPDATER"]
    raw, headers = signed(event(url, 2, repo.commit(2)))
    assert client.post(EVENTS_PATH, data=raw, headers=headers).status_code == 202
    updater.wait()
    vap = manager.status(ADMIN, str(cvl))[0]
    assert {c["path"]: c["version"] for c in vap["components"]}["d"] == "1"  # neither 2 nor 3
    history = manager.history(ADMIN, str(cvl))
    assert len(history) == 1 and "v2 refused by trust policy" in history[0]["result"]
    manager.close()
