"""Trust policy: with require-signed, unsigned or untrusted versions are refused before anything
runs, and a version signed by a trusted key runs. Signatures are real (ssh-keygen)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reposerver.publish import publish
from reposerver.repository import Repository
from reposerver.testing import sample_appliance, write_pattern
from utility.adapters.simulation import simulated_host_uri
from utility.errors import CheckFailed
from utility.service.manager import Caller, ClusterManager

ADMIN = Caller("root", "admin")


def ssh_key(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pub", "-f", str(path)], check=True
    )
    return "publisher@example.org " + path.with_suffix(".pub").read_text().strip()


def test_require_signed_refuses_unsigned_and_untrusted_and_runs_trusted(tmp_path: Path) -> None:
    trusted = ssh_key(tmp_path / "trusted")
    ssh_key(tmp_path / "stranger")
    repo = Repository.create(tmp_path / "repos" / "DNS")
    src = sample_appliance(tmp_path / "src", "DNS")
    publish(repo.path, src)  # v1 unsigned
    user = tmp_path / "user"
    user.mkdir()
    cvl = user / "MyDNS.cvl"
    cvl.write_text(
        f'import {{ url => "file:{repo.path}", cvl => "DNS.cvl" }} DNS;\n'
        'MyDNS extends DNS { domain = "acme.org"; }\n'
    )
    manager = ClusterManager(tmp_path / "state")
    manager.add_host(ADMIN, "h1", simulated_host_uri(tmp_path, "h1"), 1 << 30, 4)
    manager.add_vlans(ADMIN, "100-101")
    manager.add_public_ips(ADMIN, "192.0.2.1-192.0.2.3")
    url = repo.path.as_uri()
    manager.set_trust(ADMIN, url, True)
    manager.trust_key(ADMIN, url, trusted)
    with pytest.raises(CheckFailed, match="v1 refused by trust policy: tag is not signed"):
        manager.start(ADMIN, str(cvl))
    write_pattern(tmp_path / "src" / "root.qcow2", 0x21, 0, "64k")
    publish(repo.path, src, sign=str(tmp_path / "stranger"))  # v2 signed, untrusted key
    with pytest.raises(
        CheckFailed,
        match="v2 refused by trust policy: tag is signed by an SSH "
        "key the repository does not trust",
    ):
        manager.start(ADMIN, str(cvl))
    write_pattern(tmp_path / "src" / "root.qcow2", 0x22, 0, "64k")
    publish(repo.path, src, sign=str(tmp_path / "trusted"))  # v3 signed by the trusted key
    result = manager.start(ADMIN, str(cvl))
    assert result["components"][0]["version"] == "3"
    assert manager.trust.describe() == [{"url": url, "require_signed": True, "keys": 1}]
    manager.close()
