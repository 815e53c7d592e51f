"""Backups of data disks: names by time, generation pruning, the latest valid backup (a corrupt
or truncated one skipped), and the failed-host restore path choosing between a backup and the
utility's copy. Backup files here are real qcow2 images made by qemu-img (`-f qcow2`)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utility.adapters import backups
from utility.adapters.restore import restore_data_disks
from utility.core import backups as plan
from utility.core.desired_state import Disk, Vm

T0 = 1_764_640_000.25  # 2025-12-02


def test_a_name_says_its_time_and_names_sort_by_time() -> None:
    names = [plan.backup_name(T0 + d) for d in (0, 0.5, 61, 86400)]
    assert names == sorted(names)
    assert names[0] == "20251202T014640.250000Z.qcow2"
    assert [plan.parse_name(n).taken for n in names] == [T0, T0 + 0.5, T0 + 61, T0 + 86400]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "name",
    [".20251202T014640.250000Z.qcow2.1.part", "20251302T014640.000000Z.qcow2", "x.qcow2",
     "20251202T014640Z.qcow2", "20251202T014640.250000Z.qcow2.tmp", ""],
)  # fmt: skip
def test_other_files_are_not_backups(name: str) -> None:
    assert plan.parse_name(name) is None
    assert plan.generations([name]) == []


@settings(deadline=None)
@given(st.lists(st.integers(0, 10**6), unique=True, max_size=12), st.integers(1, 5))
def test_pruning_keeps_the_newest_valid_generations(offsets: list[int], keep: int) -> None:
    names = [plan.backup_name(T0 + o) for o in offsets]
    bad = set(names[::3])  # every third one fails its check
    delete = plan.to_prune([*names, "stray.txt"], keep, lambda n: n not in bad)
    kept = sorted(set(names) - set(delete), reverse=True)
    good = sorted(set(names) - bad, reverse=True)
    assert kept == good[:keep]
    assert "stray.txt" not in delete  # only backups are ever deleted
    assert bad <= set(delete)


def test_keeping_none_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan.to_prune([plan.backup_name(T0)], 0, lambda n: True)


def test_the_latest_valid_backup_skips_invalid_ones() -> None:
    names = [plan.backup_name(T0 + o) for o in (0, 10, 20)]
    assert plan.latest_valid(names, lambda n: True) == plan.Generation(T0 + 20, names[2])
    assert plan.latest_valid(names, lambda n: n != names[2]) == plan.Generation(T0 + 10, names[1])
    assert plan.latest_valid(names, lambda n: False) is None
    assert plan.latest_valid([], lambda n: True) is None


def _qcow2(path: Path, backing: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = ["-b", str(backing), "-F", "qcow2"] if backing else []
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), "1M"], check=True)
    return path


def _disk(tmp_path: Path) -> Disk:
    return Disk("vdb", str(tmp_path / "vm" / "data.qcow2"), "data", 1 << 20)


def test_a_truncated_or_corrupt_or_chained_backup_is_skipped_and_pruned(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    where = backups.backup_dir(disk)
    oldest = _qcow2(where / plan.backup_name(T0))
    good = _qcow2(where / plan.backup_name(T0 + 10))
    chained = _qcow2(where / plan.backup_name(T0 + 20), backing=good)
    truncated = _qcow2(where / plan.backup_name(T0 + 30))
    os.truncate(truncated, 512)
    corrupt = where / plan.backup_name(T0 + 40)
    corrupt.write_bytes(b"QFI\xfb" + b"\xff" * 600)
    torn = where / f".{plan.backup_name(T0 + 50)}.7.part"
    _qcow2(torn)
    for path in (oldest, good, chained, truncated, corrupt):
        assert backups.is_valid(path) == (path in (oldest, good)), path
    assert backups.latest(disk) == (plan.Generation(T0 + 10, good.name), good)
    doomed = backups.prune(disk, keep=1)
    assert sorted(doomed) == sorted(p.name for p in (oldest, chained, truncated, corrupt))
    assert sorted(p.name for p in where.iterdir()) == sorted([good.name, torn.name])


def _vm(disk: Disk) -> Vm:
    return Vm(
        path="a", type="DNS", origin=None, host="h", domain="d", memory=1, vcpus=1,
        vm_dir=str(Path(disk.path).parent), guest_socket="", disks=(disk,), interfaces=(),
        params=(), sensitive=(), provides=(), requires=(), needs=(),
    )  # fmt: skip


def test_the_restore_takes_the_latest_backup_when_it_is_newer_than_the_copy(
    tmp_path: Path,
) -> None:
    disk = _disk(tmp_path)
    copy = _qcow2(Path(disk.path))
    os.utime(copy, (T0, T0))
    where = backups.backup_dir(disk)
    _qcow2(where / plan.backup_name(T0 + 100))
    newest = _qcow2(where / plan.backup_name(T0 + 200))
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(newest)],
        check=True,
        capture_output=True,
    )
    broken = where / plan.backup_name(T0 + 300)
    broken.write_bytes(newest.read_bytes()[:1000])  # a torn copy: never used
    said = restore_data_disks(_vm(disk), T0 + 260)
    assert said == f"vdb: backup {newest.name} (60 s old)"
    assert copy.read_bytes() == newest.read_bytes()
    assert not list(copy.parent.glob(".*restore"))


def test_the_restore_keeps_the_copy_when_it_is_newer_than_every_backup(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    _qcow2(backups.backup_dir(disk) / plan.backup_name(T0))
    copy = _qcow2(Path(disk.path))
    before = copy.read_bytes()
    os.utime(copy, (T0 + 50, T0 + 50))
    said = restore_data_disks(_vm(disk), T0 + 80)
    assert said == "vdb: the utility's copy, last written 30 s before"
    assert copy.read_bytes() == before


def test_with_only_a_backup_the_disk_comes_from_it(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    only = _qcow2(backups.backup_dir(disk) / plan.backup_name(T0))
    vm = dataclasses.replace(_vm(disk))
    assert restore_data_disks(vm, time.time()).startswith(f"vdb: backup {only.name}")
    assert Path(disk.path).read_bytes() == only.read_bytes()


def test_a_failed_hosts_vm_restarts_with_its_latest_backup_and_status_shows_it(
    tmp_path: Path,
) -> None:
    """The control plane on test-driver hosts: the failover path restores from the newest valid
    backup (a newer truncated one is skipped), says which and how old, and `cui status NAME`
    data carries each data disk's latest backup time."""
    from tests.unit.test_utility_watchdog import make_rig

    rig = make_rig(tmp_path)
    try:
        cvl = rig.start("acme")["vap"]
        victim = rig.component(cvl, "d")
        assert victim["backups"] == {}  # data disks, none backed up yet (test hosts: skipped)
        vap = rig.manager.store.vaps(("running",))[0]
        assert rig.manager.backups.back_up(vap.id, "test") == []  # no backup job on test:
        assert vap.state is not None
        vm = next(v for v in vap.state.vms if v.path == "d")
        disk = next(d for d in vm.disks if d.role == "data")
        now = time.time()
        good = _qcow2(backups.backup_dir(disk) / plan.backup_name(now))
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 4k", str(good)],
            check=True,
            capture_output=True,
        )
        torn = backups.backup_dir(disk) / plan.backup_name(now + 1)
        torn.write_bytes(good.read_bytes()[:700])
        assert rig.component(cvl, "d")["backups"] == {disk.target: plan.parse_name(good.name).taken}  # type: ignore[union-attr]

        rig.cut.add(victim["host"])
        rig.manager.check()
        rig.now[0] += 31
        assert rig.manager.check()["moved"] == [f"{cvl}:d"]
        after = rig.component(cvl, "d")
        assert after["host"] != victim["host"]
        assert f"{disk.target}: backup {good.name} (" in after["restored"]["source"]
        assert Path(disk.path).read_bytes() == good.read_bytes()
    finally:
        rig.manager.close()


def test_the_status_line_names_each_disks_latest_backup() -> None:
    from cui.utility_cmds import _backups_line

    assert _backups_line({}, T0) == "latest backup: none yet"
    line = _backups_line({"vdc": T0 + 5, "vdb": T0}, T0 + 65)
    assert line == (
        "latest backup: vdb 2025-12-02 01:46:40 UTC (65 s ago), "
        "vdc 2025-12-02 01:46:45 UTC (60 s ago)"
    )


def test_an_applied_update_backs_up_its_vap_and_an_empty_one_does_not(tmp_path: Path) -> None:
    from tests.unit.test_utility_update import ADMIN, office, write_apps
    from utility.adapters.simulation import simulated_host_uri
    from utility.service.manager import ClusterManager

    write_apps(tmp_path / "vap")
    cvl = tmp_path / "vap" / "Office.cvl"
    cvl.write_text(office())
    manager = ClusterManager(tmp_path / "state")
    try:
        manager.add_host(ADMIN, "h1", simulated_host_uri(tmp_path, "h1"), 2 << 30, 16)
        manager.add_vlans(ADMIN, "100-101")
        manager.add_public_ips(ADMIN, "192.0.2.1-192.0.2.4")
        manager.start(ADMIN, str(cvl))
        calls: list[int] = []
        manager.updating.after_update = calls.append
        assert manager.update(ADMIN, cvl)["applied"] is False
        assert calls == []
        cvl.write_text(office(motd="welcome"))
        assert manager.update(ADMIN, cvl)["error"] is None
        assert calls == [manager.store.vaps()[0].id]
    finally:
        manager.close()


def test_a_backup_file_is_parsed_once_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cui status` asks for every data disk's latest backup: the qcow2 parse runs once per
    version of a file, and again when the file is replaced (a new verdict)."""
    image = tmp_path / "20260101T000000Z.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1", str(image), "1M"],
        check=True,
    )
    calls: list[Path] = []
    real = backups._parse_valid
    monkeypatch.setattr(backups, "_parse_valid", lambda p: calls.append(p) or real(p))
    assert backups.is_valid(image) and backups.is_valid(image)
    assert calls == [image]
    image.write_bytes(image.read_bytes()[:512])  # torn: a new size and mtime
    assert not backups.is_valid(image)
    assert calls == [image, image]
