"""The cluster manager daemon for real: `cui utility serve` and `cui` commands as subprocesses.

- the whole CLI path on a simulated host (Unix socket, 0600 permissions);
- the grep test through `cui start` and the encrypted user agent;
- crash safety on `qemu:///system`: a real (empty, never-ready) qemu domain is running when the
  daemon is SIGKILLed mid-start; the restarted daemon rolls the VAP back, leaving no domain,
  network or address behind. (The test driver cannot show this: its domains die with the
  daemon's connection, so the real libvirtd is used.)
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.conftest import REPO_ROOT
from tests.daemons import CUI, UtilityDaemon, run_cui
from utility.adapters.simulation import (
    base_image,
    paper_tree,
    publisher_domain_xml,
    simulated_host_uri,
)
from utility.adapters.store import Store

PAPER = REPO_ROOT / "examples" / "paper"


cui = functools.partial(run_cui, ok=True)


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UtilityDaemon]:
    state = tmp_path / "state"
    running = UtilityDaemon(state)
    monkeypatch.setenv("COLLECTIVE_UTILITY", f"unix://{running.socket}")
    yield running
    running.kill()


def test_cli_start_status_stop_over_the_unix_socket(daemon: UtilityDaemon, tmp_path: Path) -> None:
    assert daemon.socket.stat().st_mode & 0o777 == 0o600
    assert daemon.state.stat().st_mode & 0o777 == 0o711  # traversable for qemu, not listable
    assert (daemon.state / "utility.sqlite3").stat().st_mode & 0o777 == 0o600
    assert (daemon.state / "run").stat().st_mode & 0o777 == 0o700
    cui(
        "host",
        "add",
        "h1",
        "--uri",
        simulated_host_uri(tmp_path, "h1"),
        "--memory",
        "1G",
        "--max-vms",
        "8",
    )
    cui("vlan", "add", "100-163")
    cui("publicip", "add", "192.0.2.10-192.0.2.20")
    acme = paper_tree(PAPER, tmp_path / "acme")
    started = cui("start", str(acme))
    assert "boot order: " in started.stdout
    status = json.loads(cui("status", str(acme), "--json").stdout)[0]
    assert status["status"] == "running"
    assert {c["path"]: c["state"] for c in status["components"]} == dict.fromkeys("dfl", "running")
    refused = cui("host", "remove", "h1", ok=False)
    assert refused.returncode == 1 and "runs 3 VM(s)" in refused.stderr
    assert "stopped" in cui("stop", str(acme)).stdout
    assert json.loads(cui("status", str(acme), "--json").stdout)[0]["status"] == "stopped"
    cui("host", "remove", "h1")


def test_tcp_needs_a_token_and_tokens_have_roles(tmp_path: Path) -> None:
    state = tmp_path / "tcp-state"
    from tests.conftest import free_port

    port = free_port()
    local = UtilityDaemon(state, "--listen", f"127.0.0.1:{port}")
    try:
        url = f"http://127.0.0.1:{port}"
        denied = cui("host", "list", "--utility", url, ok=False)
        assert denied.returncode == 1 and "bearer token" in denied.stderr
        bad = cui("host", "list", "--utility", url, "--token-file", "-", stdin="nope\n", ok=False)
        assert "invalid token" in bad.stderr
        token_file = tmp_path / "token"
        token_file.write_text("nope-from-a-file\n")
        bad = cui("host", "list", "--utility", url, "--token-file", str(token_file), ok=False)
        assert "invalid token" in bad.stderr
        empty = cui("host", "list", "--utility", url, "--token-file", "-", stdin="", ok=False)
        assert empty.returncode == 2 and "no secret" in empty.stderr
        flag = cui("host", "list", "--utility", url, "--token", "nope", ok=False)
        assert flag.returncode == 2 and "No such option" in flag.stderr
    finally:
        local.kill()


def test_grep_cui_start_with_the_agent_leaves_no_clear_sensitive_value(
    daemon: UtilityDaemon, tmp_path: Path
) -> None:
    value = "grep-me-" + secrets.token_hex(8)
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "s.vmx").write_text(publisher_domain_xml("secret", 64))
    base_image(apps / "system.qcow2")
    cvl = apps / "Secret.cvl"
    cvl.write_text(
        'Secret extends VMAppliance {\n  var "required" "sensitive" rootpw;\n'
        '  vm = "s.vmx";\n  datadisks = { device => "vdb", size => "1mb" };\n}\n'
    )
    cui(
        "host",
        "add",
        "h1",
        "--uri",
        simulated_host_uri(tmp_path, "h1"),
        "--memory",
        "1G",
        "--max-vms",
        "8",
    )
    cui("vlan", "add", "100-101")
    cui("publicip", "add", "192.0.2.10-192.0.2.11")
    env = {"COLLECTIVE_AGENT_PASSWORD": "agent-pw", "COLLECTIVE_SECRET_ROOTPW": value}
    cui("start", str(cvl), env=env)
    cui("stop", str(cvl))
    # second start: the value now comes from the encrypted cache, not the environment
    cui("start", str(cvl), env={"COLLECTIVE_AGENT_PASSWORD": "agent-pw"}, stdin="")
    home = Path(os.environ["HOME"])
    agent_file = home / ".config" / "collective" / "agent.enc"
    assert agent_file.is_file()
    files = [p for d in (daemon.state, apps, home) for p in d.rglob("*") if p.is_file()]
    assert [p for p in files if value.encode() in p.read_bytes()] == []
    assert value not in daemon.output()


def libvirt_usable() -> bool:
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


@pytest.mark.vm
@pytest.mark.skipif(not libvirt_usable(), reason="libvirtd (qemu:///system) is not running")
def test_sigkill_mid_start_then_restart_leaves_a_consistent_state(
    tmp_path: Path, monkeypatch
) -> None:
    prefix = "k" + secrets.token_hex(2)  # unique domain/network/bridge names on the real host
    state = tmp_path / "state"
    first = UtilityDaemon(state, "--prefix", prefix, "--ready-timeout", "120")
    monkeypatch.setenv("COLLECTIVE_UTILITY", f"unix://{first.socket}")
    conn = libvirt.open("qemu:///system")
    try:
        cui("host", "add", "real", "--uri", "qemu:///system", "--memory", "512M", "--max-vms", "2")
        cui("vlan", "add", "3000-3001")
        cui("publicip", "add", "198.51.100.200-198.51.100.201")
        apps = tmp_path / "a"
        apps.mkdir()
        # an appliance that never says HELLO: a diskless BIOS loop, 32 MiB
        (apps / "n.vmx").write_text(publisher_domain_xml("noop", 32, disk=None))
        cvl = apps / "Noop.cvl"
        cvl.write_text('Noop extends VMAppliance {\n  vm = "n.vmx";\n}\n')
        starter = subprocess.Popen(
            [*CUI, "start", str(cvl)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        domain = f"{prefix}-1-root"
        deadline = time.monotonic() + 60
        while domain not in [d.name() for d in conn.listAllDomains()]:
            assert time.monotonic() < deadline, first.output()
            time.sleep(0.1)
        first.kill(signal.SIGKILL)  # mid-start: the domain runs, the guest is awaited
        starter.wait(timeout=30)
        assert starter.returncode == 3, starter.stderr  # could not reach the cluster manager
        assert domain in [d.name() for d in conn.listAllDomains()]  # would leak without reconcile

        # reconcile first tries to complete the start per component: the noop VM is booted
        # again and never says READY, so the whole VAP is then rolled back
        second = UtilityDaemon(state, "--prefix", prefix, "--ready-timeout", "5")
        try:
            name = f"local/{cvl.stem}"
            assert f"{name} was interrupted mid-operation; rolled back" in second.output()
            assert [d.name() for d in conn.listAllDomains() if d.name().startswith(prefix)] == []
            assert [n.name() for n in conn.listAllNetworks() if n.name().startswith(prefix)] == []
            status = json.loads(cui("status", str(cvl), "--json").stdout)[0]
            assert status["status"] == "failed" and "interrupted" in status["error"]
            pools = json.loads(cui("host", "list", "--json").stdout)
            assert pools[0]["vms"] == 0 and pools[0]["used_memory"] == 0
            store = Store(state)  # what the restarted daemon recorded, read through the state layer
            assert store.all_addresses() == []
            assert [v for v in store.pools()["vlans"] if v["vap_id"] is not None] == []
        finally:
            second.kill()
    finally:
        for item in [*conn.listAllDomains(), *conn.listAllNetworks()]:
            if item.name().startswith(prefix):
                try:
                    item.destroy()
                except libvirt.libvirtError:
                    pass  # already gone
        conn.close()
