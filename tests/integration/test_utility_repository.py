"""The paper's AcmeGroupware with every import served by the repository server (gunicorn).

DNS is published three times and the Firewall five (Groupware pins DNS v3 and Firewall v5), the
OpenLDAP once; Groupware imports them over HTTP and the user's AcmeGroupware imports Groupware.
The utility runs it on simulated hosts: program disks are overlays over the version's chain,
fetched into the cluster manager's cache and verified by hash.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import running_server
from tests.conftest import REPO_ROOT
from utility.adapters.simulation import base_image, publisher_domain_xml, simulated_host_uri
from utility.service.manager import Caller, ClusterManager

PAPER = REPO_ROOT / "examples" / "paper"
ADMIN = Caller("root", "admin")
VERSIONS = {"DNS": 3, "Firewall": 5, "OpenLDAP": 1}
VM_FILE = {"DNS": "dns.vmx", "Firewall": "fw.vmx", "OpenLDAP": "ldap.vmx"}

pytestmark = pytest.mark.slow


def publish_all(root: Path, work: Path, url: str) -> None:
    for name, count in VERSIONS.items():
        repo = Repository.create(root / name)
        src = work / name
        src.mkdir(parents=True)
        shutil.copy(PAPER / name / f"{name}.cvl", src)
        (src / VM_FILE[name]).write_text(publisher_domain_xml(name.lower(), 64))
        base_image(src / "system.qcow2")
        for n in range(count):
            subprocess.run(
                [
                    "qemu-io",
                    "-f",
                    "qcow2",
                    "-c",
                    f"write -P {n + 1} 0 64k",
                    str(src / "system.qcow2"),
                ],
                check=True,
                capture_output=True,
            )
            publish(repo.path, src / f"{name}.cvl")
    group = Repository.create(root / "Groupware")
    src = work / "Groupware"
    src.mkdir()
    text = (PAPER / "Groupware" / "Groupware.cvl").read_text()
    for name in VERSIONS:
        text = text.replace(f'"file:../{name}"', f'"{url}/{name}"')
    (src / "Groupware.cvl").write_text(text)
    publish(group.path, src / "Groupware.cvl")


def test_acme_groupware_with_imports_from_the_repository_server(tmp_path: Path) -> None:
    root = tmp_path / "repos"
    root.mkdir()
    with running_server(root, workers=2) as server:
        publish_all(root, tmp_path / "src", server.url)
        user = tmp_path / "acme"
        user.mkdir()
        acme = user / "AcmeGroupware.cvl"
        acme.write_text(
            (PAPER / "AcmeGroupware.cvl")
            .read_text()
            .replace('"file:Groupware"', f'"{server.url}/Groupware"')
        )
        manager = ClusterManager(tmp_path / "state")
        for i in (1, 2):
            manager.add_host(ADMIN, f"h{i}", simulated_host_uri(tmp_path, f"h{i}"), 1 << 30, 8)
        manager.add_vlans(ADMIN, "300-301")
        manager.add_public_ips(ADMIN, "203.0.113.5-203.0.113.6")
        result = manager.start(ADMIN, str(acme))
        comps = {c["path"]: c for c in result["components"]}
        assert {p: c["version"] for p, c in comps.items()} == {"d": "3", "f": "5", "l": "1"}
        assert comps["d"]["repository"] == f"{server.url}/DNS"
        subnet = ipaddress.IPv4Network("10.1.44.0/24")  # VLAN 300 = 0x012C
        assert all(
            ipaddress.IPv4Address(c["interfaces"][0]["ip"]) in subnet for c in comps.values()
        )
        assert comps["f"]["interfaces"][1]["ip"] == "203.0.113.5"
        assert result["boot_order"].index("d") < result["boot_order"].index("l")
        # the overlay's backing chain is the cached, hash-named objects of DNS v3
        info = subprocess.run(
            [
                "qemu-img",
                "info",
                "-f",
                "qcow2",
                "--backing-chain",
                "--output=json",
                str(tmp_path / "state" / "vaps" / str(result["id"]) / "d" / "vda.qcow2"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert str(tmp_path / "state" / "cache") in info and info.count('"filename"') == 4
        manager.stop(ADMIN, str(acme))
        assert manager.store.all_addresses() == []
        manager.close()
