"""`update` is the diff between the running state and the re-evaluated CVL (issue 5's planner)."""

from __future__ import annotations

from pathlib import Path

import pytest

from utility.adapters.simulation import base_image, publisher_domain_xml, simulated_host_uri
from utility.errors import NotFound, UtilityError
from utility.service.manager import Caller, ClusterManager

ADMIN = Caller("root", "admin")
APPS = {  # name: CVL body
    "DNS": 'var "required" domain; provides = "DNS";',
    "DNS2": 'var "required" domain; provides = "DNS";',
    "LDAP": 'var "required" domain; var motd; requires = "DNS";',
    "Web": "",
    "Mail": 'requires = "DNS";',
}


def write_apps(root: Path) -> None:
    for name, body in APPS.items():
        d = root / name
        d.mkdir(parents=True)
        base_image(d / "system.qcow2")
        (d / "x.vmx").write_text(publisher_domain_xml(name.lower(), 64))
        kind = "DNS" if name == "DNS2" else name
        (d / f"{kind}.cvl").write_text(
            f'{kind} extends VMAppliance {{ {body} vm = "x.vmx"; '
            'datadisks = { device => "vdb", size => "1mb" }; }\n'
        )


def office(
    dns_dir: str = "DNS", motd: str = "hello", with_web: bool = True, with_mail: bool = False
) -> str:
    imports = [
        f'import {{ url => "file:{dns_dir}", cvl => "DNS.cvl" }} DNS;',
        'import { url => "file:LDAP", cvl => "LDAP.cvl" } LDAP;',
        'import { url => "file:Web", cvl => "Web.cvl" } Web;',
        'import { url => "file:Mail", cvl => "Mail.cvl" } Mail;',
    ]
    parts = [
        "DNS d;",
        "LDAP l;",
        'd.domain = "acme.org";',
        'l.domain = "acme.org";',
        f'l.motd = "{motd}";',
        'vanIF = "d.ethernet0";',
    ]
    if with_web:
        parts.append("Web w;")
    if with_mail:
        parts.append("Mail m;")
    return "\n".join(imports) + "\nOffice extends VANAppliance {\n  " + "\n  ".join(parts) + "\n}\n"


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    write_apps(tmp_path / "vap")
    cvl = tmp_path / "vap" / "Office.cvl"
    cvl.write_text(office())
    manager = ClusterManager(tmp_path / "state")
    manager.add_host(ADMIN, "h1", simulated_host_uri(tmp_path, "h1"), 2 << 30, 16)
    manager.add_vlans(ADMIN, "100-101")
    manager.add_public_ips(ADMIN, "192.0.2.1-192.0.2.4")
    manager.start(ADMIN, str(cvl))
    yield manager, cvl
    manager.close()


def storage(manager: ClusterManager) -> Path:
    """Where the utility keeps the VAP's VM directories and attic (not next to the CVL)."""
    (vap,) = manager.store.vaps()
    return manager.parts.pipeline.vap_dir(vap.id)


def domain_ids(manager: ClusterManager) -> dict[str, int]:
    conn = manager.host("h1").connection()
    return {d.name(): d.ID() for d in conn.listAllDomains()}


def test_nothing_changed_means_an_empty_plan(setup) -> None:  # type: ignore[no-untyped-def]
    manager, cvl = setup
    assert manager.update(ADMIN, cvl, dry_run=True)["lines"] == []
    assert manager.update(ADMIN, cvl)["applied"] is False


def test_dry_run_shows_exactly_the_four_actions_and_changes_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    manager, cvl = setup
    before = (domain_ids(manager), manager.store.all_addresses(), manager.status(ADMIN, str(cvl)))
    cvl.write_text(office(dns_dir="DNS2", motd="welcome", with_web=False, with_mail=True))
    result = manager.update(ADMIN, cvl, dry_run=True)
    symbols = sorted((a["symbol"], a["path"], tuple(a["changed"])) for a in result["plan"])
    assert symbols == [("+", "m", ()), ("-", "w", ()), ("~", "d", ()), ("↻", "l", ("motd",))]
    assert result["applied"] is False
    after = (domain_ids(manager), manager.store.all_addresses(), manager.status(ADMIN, str(cvl)))
    assert after[:2] == before[:2]
    assert [c["state"] for c in after[2][0]["components"]] == ["running"] * 3


def test_applying_touches_only_the_affected_vms_and_keeps_data(setup) -> None:  # type: ignore[no-untyped-def]
    manager, cvl = setup
    ids = domain_ids(manager)
    status = {c["path"]: c for c in manager.status(ADMIN, str(cvl))[0]["components"]}
    data = storage(manager) / "d" / "data-vdb.qcow2"
    data_bytes = data.read_bytes()
    cvl.write_text(office(dns_dir="DNS2", motd="welcome", with_web=False, with_mail=True))
    result = manager.update(ADMIN, cvl)
    assert result["applied"] and result["error"] is None
    after = domain_ids(manager)
    assert after["col-1-l"] == ids["col-1-l"]  # resent, not restarted
    assert after["col-1-d"] != ids["col-1-d"]  # new version: restarted
    assert "col-1-w" not in after and "col-1-m" in after
    assert data.read_bytes() == data_bytes
    attic = list((storage(manager) / ".attic").iterdir())
    assert len(attic) == 1 and attic[0].name.startswith("w-")
    assert (attic[0] / "data-vdb.qcow2").is_file() and not (storage(manager) / "w").exists()
    now = {c["path"]: c for c in manager.status(ADMIN, str(cvl))[0]["components"]}
    assert now["l"]["interfaces"] == status["l"]["interfaces"]  # addresses are kept
    assert now["d"]["interfaces"] == status["d"]["interfaces"]
    assert now["d"]["repository"].endswith("/DNS2") and now["l"]["params"]["motd"] == ["welcome"]
    held = manager.store.all_addresses()
    assert {p for _, _, _, p in held} == {"d.ethernet0", "l.ethernet0", "m.ethernet0"}
    assert len({a for a, *_ in held}) == len(held) == 6
    assert manager.update(ADMIN, cvl, dry_run=True)["lines"] == []  # converged
    manager.stop(ADMIN, str(cvl))
    assert manager.store.all_addresses() == [] and domain_ids(manager) == {}


def test_update_of_one_component_leaves_the_others_alone(setup) -> None:  # type: ignore[no-untyped-def]
    manager, cvl = setup
    cvl.write_text(office(dns_dir="DNS2", motd="welcome"))
    result = manager.update(ADMIN, cvl, "l", dry_run=True)
    assert [(a["symbol"], a["path"]) for a in result["plan"]] == [("↻", "l")]
    with pytest.raises(NotFound, match="no component 'zz'"):
        manager.update(ADMIN, cvl, "zz", dry_run=True)


def test_a_version_that_never_becomes_ready_is_rolled_back_with_its_data(
    setup,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """Test hosts have no guest, so the new version's readiness failure is injected."""
    import subprocess

    from utility.adapters.executor import Executor

    manager, cvl = setup
    data = storage(manager) / "d" / "data-vdb.qcow2"
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(data)],
        check=True,
        capture_output=True,
    )
    before = data.read_bytes()
    real_boot = Executor.boot

    def boot(self: Executor, vm, configured=None) -> None:  # type: ignore[no-untyped-def]
        if (vm.origin or {}).get("url", "").endswith("/DNS2"):
            # the new version scribbles on its data disk, then never says READY
            subprocess.run(
                ["qemu-io", "-f", "qcow2", "-c", "write -P 0x66 0 64k", vm.disks[-1].path],
                check=True,
                capture_output=True,
            )
            raise UtilityError("d on host h1 did not become ready: no READY in 240 s")
        real_boot(self, vm, configured)

    monkeypatch.setattr(Executor, "boot", boot)
    cvl.write_text(office(dns_dir="DNS2"))
    result = manager.update(ADMIN, cvl)
    assert "rolled back" in result["error"]
    now = {c["path"]: c for c in manager.status(ADMIN, str(cvl))[0]["components"]}
    assert now["d"]["repository"].endswith("/DNS") and now["d"]["state"] == "running"
    assert data.read_bytes() == before  # the bytes from before the update, 0x5a pattern
    assert not data.with_name(data.name + ".pre-update").exists()
    history = manager.history(ADMIN, str(cvl))
    assert history[-1]["trigger"] == "user" and history[-1]["result"].startswith("failed:")
    # an automatic update does not try that version again; a manual one may
    skipped = manager.update(ADMIN, cvl, trigger="push")
    assert skipped["applied"] is False and "failed before" in skipped["error"]
    monkeypatch.setattr(Executor, "boot", real_boot)
    forced = manager.update(ADMIN, cvl)
    assert forced["error"] is None
    assert manager.status(ADMIN, str(cvl))[0]["components"][0]["repository"].endswith("/DNS2")


def addresses_of(manager: ClusterManager, prefix: str) -> set[str]:
    return {a for a, _, _, path in manager.store.all_addresses() if path.startswith(prefix)}


def test_a_component_stopped_on_request_keeps_its_addresses_and_restarts_with_them(setup) -> None:  # type: ignore[no-untyped-def]
    manager, cvl = setup
    before = {c["path"]: c for c in manager.status(ADMIN, str(cvl))[0]["components"]}
    held = addresses_of(manager, "w.")
    assert len(held) == 2  # w.ethernet0: a MAC and an IP
    manager.stop(ADMIN, str(cvl), "w")
    assert addresses_of(manager, "w.") == held  # kept while stopped
    rows = {r.path: r.state for r in manager.store.vms(manager.store.vap_by_name("root/Office").id)}
    assert rows["w"] == "stopped"
    result = manager.update(ADMIN, cvl)
    assert [line.split(" (")[0] for line in result["lines"]] == ["+ w"]
    after = {c["path"]: c for c in manager.status(ADMIN, str(cvl))[0]["components"]}
    assert after["w"]["state"] == "running"
    assert after["w"]["interfaces"] == before["w"]["interfaces"]  # same MAC and IP
    assert addresses_of(manager, "w.") == held


def test_a_component_removed_from_the_cvl_while_stopped_is_cleaned_next_update(setup) -> None:  # type: ignore[no-untyped-def]
    manager, cvl = setup
    vap_id = manager.store.vap_by_name("root/Office").id
    manager.stop(ADMIN, str(cvl), "w")
    cvl.write_text(office(with_web=False))
    manager.update(ADMIN, cvl)
    assert addresses_of(manager, "w.") == set()
    assert "w" not in {r.path for r in manager.store.vms(vap_id)}
    assert {c["path"] for c in manager.status(ADMIN, str(cvl))[0]["components"]} == {"d", "l"}
    everything = manager.store.all_addresses()
    assert len({a for a, *_ in everything}) == len(everything) == 4  # d and l: MAC + IP each
    assert not (storage(manager) / "w").exists()
    assert [p.name.split("-")[0] for p in (storage(manager) / ".attic").iterdir()] == ["w"]


def test_after_a_daemon_restart_automatic_updates_wait_for_the_user_s_sensitive_values(
    tmp_path: Path,
) -> None:
    app = tmp_path / "vap" / "Secret"
    app.mkdir(parents=True)
    base_image(app / "system.qcow2")
    (app / "x.vmx").write_text(publisher_domain_xml("s", 64))
    (app / "Secret.cvl").write_text(
        'Secret extends VMAppliance { var "required" "sensitive" pw; var motd; vm = "x.vmx"; }\n'
    )
    cvl = tmp_path / "vap" / "Mine.cvl"
    cvl.write_text(
        'import { url => "file:Secret", cvl => "Secret.cvl" } Secret;\n'
        'Mine extends Secret { motd = "one"; }\n'
    )
    state, uri = tmp_path / "state", simulated_host_uri(tmp_path, "h1")
    first = ClusterManager(state)
    first.add_host(ADMIN, "h1", uri, 1 << 30, 4)
    first.add_vlans(ADMIN, "100-101")
    first.add_public_ips(ADMIN, "192.0.2.1-192.0.2.2")
    first.start(ADMIN, str(cvl), {"pw": "hunter2"})
    cvl.write_text(cvl.read_text().replace('"one"', '"two"'))
    resent = first.update(ADMIN, cvl, trigger="push")
    assert resent["applied"] and [line[0] for line in resent["lines"]] == ["↻"]
    first.close()

    again = ClusterManager(state)  # the daemon restarted: the value of pw is gone
    cvl.write_text(cvl.read_text().replace('"two"', '"three"'))
    result = again.update(ADMIN, cvl, trigger="push")
    assert result["applied"] is False and "waiting for its user" in result["error"]
    assert "pw" in result["error"] and "hunter2" not in json_of(again)
    (vap,) = again.status(ADMIN)
    assert vap["error"].startswith("waiting for its user") and vap["status"] == "running"
    assert again.history(ADMIN)[-1]["result"].startswith("waiting for its user")
    assert again.update(ADMIN, cvl, secrets={"pw": "hunter2"})["applied"] is True
    assert again.status(ADMIN)[0]["error"] is None
    cvl.write_text(cvl.read_text().replace('"three"', '"four"'))
    assert again.update(ADMIN, cvl, trigger="push")["applied"] is True
    again.close()
    for path in tmp_path.rglob("*"):  # the value never reached a file (keys only, in memory)
        assert not path.is_file() or b"hunter2" not in path.read_bytes(), path


def json_of(manager: ClusterManager) -> str:
    import json

    return json.dumps([manager.status(ADMIN), manager.history(ADMIN)])
