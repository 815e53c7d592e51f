"""VAPs by content (issue 12, item 1): CVL bundles read, checked, stored and evaluated.

Real parts: CVL evaluation, SQLite state, qemu-img disks and libvirt `test:` driver hosts. The
attacks build the hostile bundle (an import naming a file outside it; a user naming another
user's VAP) and assert the refusal and that nothing changed in the state database.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from utility.adapters import bundles as bundles_module
from utility.adapters.bundles import read_bundle, vap_dir
from utility.adapters.db_check import SCHEMA_VERSION, check_database, migrate
from utility.adapters.simulation import paper_tree, simulated_host_uri
from utility.adapters.store import Store
from utility.core.bundle import Bundle, BundleError, default_name
from utility.errors import CheckFailed, Conflict, DatabaseRefused, NotFound
from utility.service.manager import Caller, ClusterManager

ADMIN = Caller("root", "admin")
ALICE = Caller("alice", "user")
BOB = Caller("bob", "user")
MiB = 1 << 20
PAPER = REPO_ROOT / "examples" / "paper"


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    manager = ClusterManager(tmp_path / "state")
    uri = simulated_host_uri(tmp_path, f"h1-{tmp_path.name}", memory_mib=4096)
    manager.add_host(ADMIN, "h1", uri, 2048 * MiB, 16)
    manager.add_vlans(ADMIN, "100-163")
    manager.add_public_ips(ADMIN, "192.0.2.10-192.0.2.20")
    yield manager
    manager.close()


def everything(manager: ClusterManager) -> dict[str, Any]:
    """Every VAP record, bundle, VM and allocation in the state database."""
    db = manager.store.read()
    return {
        table: [tuple(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY 1")]
        for table in ("vaps", "bundles", "vap_bundles", "vms", "addresses", "vlans", "public_ips")
    }


# -- reading a bundle (the client's side) --------------------------------------------------------


def test_a_bundle_holds_the_file_and_the_plain_directories_it_imports(tmp_path: Path) -> None:
    acme = paper_tree(PAPER, tmp_path / "acme")
    (tmp_path / "acme" / "notes").mkdir()
    (tmp_path / "acme" / "notes" / "big.txt").write_text("not imported")
    bundle = read_bundle(acme)
    assert bundle.root_dir == str(acme.parent) and bundle.root == "AcmeGroupware.cvl"
    assert "Groupware/Groupware.cvl" in bundle.files  # file:Groupware
    assert "DNS/DNS.cvl" in bundle.files  # file:../DNS from Groupware/, still inside the root
    assert "DNS/system.qcow2" in bundle.files  # the appliance's own files come along
    assert not any(name.startswith("notes/") for name in bundle.files)
    again = Bundle.from_wire(json.loads(json.dumps(bundle.to_wire())))
    assert again == bundle and again.digest() == bundle.digest()
    assert default_name(bundle.root) == "AcmeGroupware"


def test_imports_outside_the_root_are_not_sent(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "X.cvl").write_text("X extends VANAppliance { }\n")
    user = tmp_path / "me" / "web.cvl"
    user.parent.mkdir()
    user.write_text('import { url => "file:../elsewhere", cvl => "X.cvl" } X;\nWeb extends X { }\n')
    notes: list[str] = []
    bundle = read_bundle(user, notes=notes)
    assert set(bundle.files) == {"web.cvl"}
    assert notes == [
        f"file:../elsewhere ({outside}) is outside the bundle root {user.parent}: not sent; the "
        "utility resolves it on its own host only for VAPs an administrator starts"
    ]
    assert read_bundle(user, root=tmp_path).files.keys() == {"me/web.cvl", "elsewhere/X.cvl"}


def test_symlinks_and_oversized_bundles_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "me" / "web.cvl"
    user.parent.mkdir()
    user.write_text('import { url => "file:lib", cvl => "L.cvl" } L;\nWeb extends L { }\n')
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (tmp_path / "me" / "lib").mkdir()
    (tmp_path / "me" / "lib" / "L.cvl").write_text("L extends VANAppliance { }\n")
    (tmp_path / "me" / "lib" / "key").symlink_to(secret)
    with pytest.raises(BundleError, match=r"key is a symbolic link"):
        read_bundle(user)
    (tmp_path / "me" / "lib" / "key").unlink()
    assert "lib/L.cvl" in read_bundle(user).files
    shutil.rmtree(tmp_path / "me" / "lib")
    (tmp_path / "me" / "lib").symlink_to(tmp_path)  # a directory link out of the root
    with pytest.raises(BundleError, match=r"lib is a symbolic link"):
        read_bundle(user)
    (tmp_path / "me" / "lib").unlink()
    (tmp_path / "me" / "disk.img").write_bytes(b"x" * 5000)
    monkeypatch.setattr(bundles_module, "MAX_BYTES", 4096)
    with pytest.raises(BundleError, match=r"grew over 4096 bytes"):
        read_bundle(user)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"files": {"../x.cvl": "eA=="}}, "not a clean relative path"),
        ({"files": {"/etc/passwd": "eA=="}}, "not a clean relative path"),
        ({"files": {".hidden": "eA=="}}, "not a clean relative path"),
        ({"files": {"a\x00b": "eA=="}}, "not a clean relative path"),
        ({"files": {"a\ud800": "eA=="}}, "not a clean relative path"),
        ({"files": {"w.cvl": "not base64!"}}, "not valid base64"),
        ({"root": "other.cvl"}, "is not among its files"),
        ({"root_dir": "relative/dir"}, "normalised absolute path"),
        ({"root_dir": "/a/../b"}, "normalised absolute path"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_hostile_wire_bundles_are_refused(change: dict[str, Any], message: str) -> None:
    wire: dict[str, Any] = {
        "root_dir": "/home/u",
        "root": "w.cvl",
        "files": {"w.cvl": base64.b64encode(b"W extends VANAppliance { }\n").decode()},
    }
    files = change.pop("files", {})
    wire = {**wire, **change, "files": {**wire["files"], **files}}
    with pytest.raises(BundleError, match=message):
        Bundle.from_wire(wire)


def test_a_bundled_qcow2_may_not_name_a_backing_file() -> None:
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + (512).to_bytes(8, "big") + b"\0" * 100
    with pytest.raises(BundleError, match="backing file"):
        Bundle("/u", "w.cvl", {"w.cvl": b"x", "d.qcow2": header})


# -- the daemon's side ----------------------------------------------------------------------------


def user_file(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("form", ["file:{p}", "file://{p}", "file://localhost{p}", "relative"])
def test_a_users_bundle_importing_outside_itself_is_refused_and_changes_nothing(
    cluster: ClusterManager, tmp_path: Path, form: str
) -> None:
    probe = tmp_path / "probe"  # a directory the daemon could read, outside alice's bundle
    shutil.copytree(PAPER / "DNS", probe)
    url = "file:" + "../" * 30 + str(probe)[1:] if form == "relative" else form.format(p=probe)
    text = f'import {{ url => "{url}", cvl => "DNS.cvl" }} D;\nW extends D {{ }}\n'
    hostile = user_file(tmp_path / "alice", "web.cvl", text)
    before = everything(cluster)
    with pytest.raises(CheckFailed) as refused:
        cluster.start(ALICE, read_bundle(hostile))
    assert "outside the submitted bundle" in str(refused.value)
    assert "reads no file of its own for a user" in str(refused.value)
    assert everything(cluster) == before
    assert not any((tmp_path / "state" / "bundles").iterdir())


def test_the_wire_form_cannot_smuggle_a_path_either(cluster: ClusterManager) -> None:
    """A bundle made by hand: its root says /etc, its import names /etc/passwd's directory."""
    text = b'import { url => "file:/etc", cvl => "passwd" } P;\nW extends P { }\n'
    before = everything(cluster)
    with pytest.raises(CheckFailed, match="outside the submitted bundle"):
        cluster.start(BOB, Bundle("/home/bob", "w.cvl", {"w.cvl": text}))
    with pytest.raises(CheckFailed, match="no file passwd in the submitted bundle"):
        cluster.start(BOB, Bundle("/etc", "w.cvl", {"w.cvl": text.replace(b"/etc", b".")}))
    assert everything(cluster) == before


def test_two_users_each_run_web_with_storage_by_vap_id(
    cluster: ClusterManager, tmp_path: Path
) -> None:
    alice = paper_tree(PAPER, tmp_path / "alice")
    bob = paper_tree(PAPER, tmp_path / "bob")
    a = cluster.start(ALICE, read_bundle(alice), name="web")
    b = cluster.start(BOB, read_bundle(bob), name="web")
    assert (a["name"], a["owner"], b["name"], b["owner"]) == ("web", "alice", "web", "bob")
    assert a["id"] != b["id"]
    state = tmp_path / "state"
    for started in (a, b):
        vap = cluster.store.vap(started["id"])
        assert vap.state is not None
        for vm in vap.state.vms:
            assert Path(vm.vm_dir).parent == vap_dir(state, started["id"])
            for disk in vm.disks:
                if disk.role == "program":
                    assert Path(disk.base).is_relative_to(state / "bundles")
                assert Path(disk.path).is_relative_to(vap_dir(state, started["id"]))
    # nothing is written next to the users' files
    assert not list(tmp_path.joinpath("alice").glob("*/vda.qcow2"))
    assert not (tmp_path / "alice" / "d").exists()
    assert [v["owner"] for v in cluster.status(ALICE)] == ["alice"]
    assert cluster.status(ALICE, "web")[0]["id"] == a["id"]
    assert cluster.status(BOB, "web")[0]["id"] == b["id"]
    assert cluster.status(ADMIN, "alice/web")[0]["id"] == a["id"]
    with pytest.raises(Conflict, match="web is already running"):
        cluster.start(ALICE, read_bundle(alice), name="web")


def test_a_user_naming_another_users_vap_gets_the_answer_of_a_missing_one(
    cluster: ClusterManager, tmp_path: Path
) -> None:
    cluster.start(ALICE, read_bundle(paper_tree(PAPER, tmp_path / "alice")), name="web")
    before = everything(cluster)
    for call in (
        lambda ref: cluster.status(BOB, ref),
        lambda ref: cluster.stop(BOB, ref),
        lambda ref: cluster.update(BOB, ref, dry_run=True),
        lambda ref: cluster.show(BOB, ref),
        lambda ref: cluster.history(BOB, ref),
    ):
        with pytest.raises(NotFound) as theirs:
            call("alice/web")
        with pytest.raises(NotFound) as nothing:
            call("alice/nothing")
        assert str(theirs.value).replace("alice/web", "X") == str(nothing.value).replace(
            "alice/nothing", "X"
        )
    assert cluster.history(BOB, "web") == []  # bob's own name: nothing of alice's
    assert everything(cluster) == before


def test_what_runs_is_the_stored_bundle_shown_and_versioned(
    cluster: ClusterManager, tmp_path: Path
) -> None:
    acme = paper_tree(PAPER, tmp_path / "acme")
    started = cluster.start(ALICE, read_bundle(acme))
    assert started["name"] == "AcmeGroupware"
    shown = cluster.show(ALICE, "AcmeGroupware")
    assert shown["texts"]["AcmeGroupware.cvl"] == acme.read_text()
    assert [v["seq"] for v in shown["versions"]] == [1]
    first = shown["digest"]
    # the user's directory goes away: the VAP still updates from what it stored
    moved = tmp_path / "moved"
    acme.parent.rename(moved)
    plan = cluster.update(ALICE, "AcmeGroupware")
    assert plan["lines"] == [] and plan["error"] is None
    # a new bundle: a changed parameter
    (moved / "AcmeGroupware.cvl").write_text(
        (moved / "AcmeGroupware.cvl").read_text().replace("acme.org", "acme.example")
    )
    changed = cluster.update(
        ALICE, "AcmeGroupware", bundle=read_bundle(moved / "AcmeGroupware.cvl")
    )
    assert changed["applied"] and changed["error"] is None
    shown = cluster.show(ALICE, "AcmeGroupware")
    assert [v["seq"] for v in shown["versions"]] == [1, 2]
    assert shown["digest"] != first and "acme.example" in shown["texts"]["AcmeGroupware.cvl"]
    assert shown["root_dir"] == str(moved)
    # a dry run with a bundle records nothing
    (moved / "AcmeGroupware.cvl").write_text(
        (moved / "AcmeGroupware.cvl").read_text().replace("acme.example", "acme.dry")
    )
    cluster.update(
        ALICE, "AcmeGroupware", bundle=read_bundle(moved / "AcmeGroupware.cvl"), dry_run=True
    )
    assert [v["seq"] for v in cluster.show(ALICE, "AcmeGroupware")["versions"]] == [1, 2]


def test_a_stopped_vap_started_again_keeps_its_id_and_data_disks(
    cluster: ClusterManager, tmp_path: Path
) -> None:
    text = (
        (PAPER / "AcmeGroupware.cvl")
        .read_text()
        .replace(
            'domain = "acme.org";', 'domain = "acme.org";\n    l.datadisks = "device=vdb&size=1mb";'
        )
    )
    acme = paper_tree(PAPER, tmp_path / "acme")
    acme.write_text(text)
    first = cluster.start(ALICE, read_bundle(acme))
    data = vap_dir(tmp_path / "state", first["id"]) / "l" / "data-vdb.qcow2"
    assert data.is_file()
    data_inode = data.stat().st_ino
    cluster.stop(ALICE, "AcmeGroupware")
    again = cluster.start(ALICE, read_bundle(acme))
    assert again["id"] == first["id"] and data.stat().st_ino == data_inode


# -- migration of the old layout ------------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE vaps (id INTEGER PRIMARY KEY AUTOINCREMENT, cvl_path TEXT NOT NULL,
  owner TEXT NOT NULL, status TEXT NOT NULL, state_json TEXT, error TEXT, updated REAL NOT NULL);
CREATE UNIQUE INDEX vaps_active ON vaps (cvl_path)
  WHERE status IN ('starting', 'running', 'stopping', 'updating');
CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
  cvl_path TEXT NOT NULL, trigger TEXT NOT NULL, actions TEXT NOT NULL, versions TEXT NOT NULL,
  result TEXT NOT NULL);
CREATE TABLE failed_versions (cvl_path TEXT NOT NULL, url TEXT NOT NULL,
  version TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (cvl_path, url, version));
PRAGMA user_version = 3;
"""


def old_database(state: Path, statuses: list[tuple[str, str, str]]) -> None:
    state.mkdir()
    db = sqlite3.connect(state / "utility.sqlite3")
    db.executescript(OLD_SCHEMA)
    for path, owner, status in statuses:
        db.execute(
            "INSERT INTO vaps (cvl_path, owner, status, updated) VALUES (?,?,?,0)",
            (path, owner, status),
        )
        db.execute(
            "INSERT INTO history (at, cvl_path, trigger, actions, versions, result) "
            "VALUES (0, ?, 'user', '[]', '{}', 'applied')",
            (path,),
        )
    db.commit()
    db.close()


def test_an_old_layout_with_stopped_vaps_is_migrated_to_names(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old_database(
        state,
        [
            ("/home/a/web.cvl", "alice", "stopped"),
            ("/home/a/web.cvl", "alice", "failed"),  # the newer record of the same file
            ("/home/a/other/web.cvl", "alice", "stopped"),  # the same stem: made unique
            ("/home/b/My App!.cvl", "bob", "stopped"),
        ],
    )
    check_database(state)  # nothing active: accepted
    store = Store(state)
    assert migrate(store.read()) == SCHEMA_VERSION
    names = {(v.name, v.status) for v in store.vaps()}
    assert names == {
        ("alice/web", "failed"),
        ("alice/web-2", "stopped"),
        ("bob/My-App-", "stopped"),
    }
    assert {h["name"] for h in store.history()} == {"alice/web", "alice/web-2", "bob/My-App-"}
    assert store.vap_by_name("alice/web") is not None


def test_an_old_layout_with_a_running_vap_is_refused_with_the_way_out(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old_database(state, [("/home/a/web.cvl", "alice", "running")])

    def rows() -> list[tuple[Any, ...]]:
        db = sqlite3.connect(state / "utility.sqlite3")
        try:
            return db.execute("SELECT * FROM vaps").fetchall()
        finally:
            db.close()

    before = rows()
    with pytest.raises(DatabaseRefused) as refused:
        check_database(state)
    text = str(refused.value)
    assert "/home/a/web.cvl" in text and "previous version" in text and "cui stop" in text
    with pytest.raises(DatabaseRefused):
        Store(state)
    assert rows() == before


def test_only_an_administrators_vap_may_import_the_daemons_own_directories(
    cluster: ClusterManager, tmp_path: Path
) -> None:
    """The administrator owns the daemon's file system: their VAP may import an appliance
    directory of it (as local repositories are used); the same bundle from a user may not."""
    acme = paper_tree(PAPER, tmp_path / "site")
    text = acme.read_text().replace('"file:Groupware"', f'"file:{acme.parent / "Groupware"}"')
    mine = user_file(tmp_path / "admin", "Acme.cvl", text)
    bundle = read_bundle(mine)
    assert set(bundle.files) == {"Acme.cvl"}  # the import lies outside: not sent
    with pytest.raises(CheckFailed, match="outside the submitted bundle"):
        cluster.start(ALICE, bundle)
    started = cluster.start(ADMIN, bundle)
    assert started["status"] == "running" and started["owner"] == "root"
    # an automatic update re-evaluates it with the rights it was started with
    assert cluster.update(ADMIN, "root/Acme", dry_run=True)["error"] is None


def test_bundled_appliance_files_stay_inside_their_directory(tmp_path: Path) -> None:
    from utility.adapters.appliance_files import BundleFiles
    from utility.adapters.bundles import BundleStore
    from utility.errors import ApplianceError

    bundle = Bundle(
        "/u", "w.cvl", {"w.cvl": b"x", "A/a.xml": b"<a/>", "B/secret.qcow2": b"private"}
    )
    stored = BundleStore(tmp_path, Store(tmp_path)).pending(bundle)
    files = BundleFiles(stored, "A", "A (bundled)")
    assert files.read("a.xml") == b"<a/>"
    for name in ("../B/secret.qcow2", "/etc/passwd", "../../etc/passwd", "nothing.xml"):
        with pytest.raises(ApplianceError):
            files.read(name)
