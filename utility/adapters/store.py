"""The cluster manager's durable state: SQLite (WAL) in the state directory.

Hosts, VLAN and public-IP pools, the blacklist, API tokens, VAPs with their current state, and
every allocation. Allocations have UNIQUE constraints, so no VLAN, IP or MAC can be held twice
even if two starts race; each start allocates in one `BEGIN IMMEDIATE` transaction. Sensitive
values are never passed in: `VapState` is stored masked.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from utility.adapters import killpoint
from utility.core.desired_state import VapState, from_json, to_json
from utility.errors import Conflict, DatabaseRefused, NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
  name TEXT PRIMARY KEY, uri TEXT NOT NULL, memory INTEGER NOT NULL, max_vms INTEGER NOT NULL,
  embedded INTEGER NOT NULL DEFAULT 0, underlay TEXT UNIQUE);
CREATE TABLE IF NOT EXISTS vlans (vlan INTEGER PRIMARY KEY, vap_id INTEGER, segment TEXT);
CREATE TABLE IF NOT EXISTS public_ips (ip TEXT PRIMARY KEY, vap_id INTEGER, iface TEXT);
CREATE TABLE IF NOT EXISTS blacklist (url TEXT NOT NULL, version TEXT NOT NULL,
  PRIMARY KEY (url, version));
CREATE TABLE IF NOT EXISTS tokens (digest TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('admin', 'user')), created REAL);
CREATE TABLE IF NOT EXISTS vaps (
  id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, owner TEXT NOT NULL,
  status TEXT NOT NULL, state_json TEXT, error TEXT, updated REAL NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS vaps_name ON vaps (name);
CREATE TABLE IF NOT EXISTS bundles (digest TEXT PRIMARY KEY, root_dir TEXT NOT NULL,
  root TEXT NOT NULL, manifest TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS vap_bundles (vap_id INTEGER NOT NULL, seq INTEGER NOT NULL,
  digest TEXT NOT NULL REFERENCES bundles (digest), at REAL NOT NULL,
  PRIMARY KEY (vap_id, seq));
CREATE TABLE IF NOT EXISTS addresses (address TEXT PRIMARY KEY, kind TEXT NOT NULL,
  vap_id INTEGER NOT NULL, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vms (
  vap_id INTEGER NOT NULL, path TEXT NOT NULL, host TEXT NOT NULL, domain TEXT NOT NULL,
  memory INTEGER NOT NULL, state TEXT NOT NULL, started REAL, boot_seq INTEGER,
  PRIMARY KEY (vap_id, path));
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
  vap_id INTEGER, kind TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS failed_versions (name TEXT NOT NULL, url TEXT NOT NULL,
  version TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (name, url, version));
CREATE TABLE IF NOT EXISTS secret_keys (vap_id INTEGER NOT NULL, key TEXT NOT NULL,
  PRIMARY KEY (vap_id, key));
CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
  name TEXT NOT NULL, trigger TEXT NOT NULL, actions TEXT NOT NULL, versions TEXT NOT NULL,
  result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen_events (id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS local_files (vap_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS restart_policy (vap_id INTEGER PRIMARY KEY, policy TEXT NOT NULL
  CHECK (policy IN ('always', 'never')));
"""

MOVES_SCHEMA = """
CREATE TABLE IF NOT EXISTS host_health (name TEXT PRIMARY KEY,
  health TEXT NOT NULL DEFAULT 'up' CHECK (health IN ('up', 'suspect', 'failed', 'fencing')),
  since REAL, drained INTEGER NOT NULL DEFAULT 0, note TEXT);
CREATE TABLE IF NOT EXISTS vm_restores (vap_id INTEGER NOT NULL, path TEXT NOT NULL,
  at REAL NOT NULL, source TEXT NOT NULL, PRIMARY KEY (vap_id, path));
"""
"""Host health and drain, and where a restored VM's data disks came from (schema version 4)."""

PARSED_STATES = 4096
"""Most parsed VAP states the store keeps (by their stored text) before starting afresh."""

ACTIVE = ("starting", "running", "stopping", "updating")
# VM states that may hold a host's resources: a crashed, dead or stopped VM runs nowhere; an
# `unknown` one (its host did not answer) may still run, so it keeps counting.
NOT_RUNNING = ("stopped", "crashed", "dead")
RESTART_POLICIES = ("always", "never")


@dataclass(frozen=True)
class HostRow:
    """A registered host."""

    name: str
    uri: str
    memory: int
    max_vms: int
    embedded: bool = False
    underlay: str | None = None  # the address VXLAN ports use (`cui host add --underlay`)


@dataclass(frozen=True)
class VapRow:
    """A VAP record."""

    id: int
    name: str
    """`owner/short name`: a VAP is identified by its owner and the name they gave it."""
    owner: str
    status: str
    state: VapState | None
    error: str | None
    updated: float


@dataclass(frozen=True)
class VmRow:
    """A component VM's runtime record."""

    vap_id: int
    path: str
    host: str
    domain: str
    memory: int
    state: str
    started: float | None
    boot_seq: int | None


def token_digest(token: str) -> str:
    """Tokens are stored only as their SHA-256 (they are random 256-bit strings)."""
    return hashlib.sha256(token.encode()).hexdigest()


def add_host_underlay(db: sqlite3.Connection) -> None:
    """Give a `hosts` table made before VXLAN segments its `underlay` column (idempotent).

    SQLite cannot add a UNIQUE column, so a unique index stands in for the constraint.
    """
    columns = {r[1] for r in db.execute("PRAGMA table_info(hosts)")}
    if "underlay" not in columns:
        db.execute("ALTER TABLE hosts ADD COLUMN underlay TEXT")
        db.execute("CREATE UNIQUE INDEX IF NOT EXISTS hosts_underlay ON hosts (underlay)")


def add_token_created(db: sqlite3.Connection) -> None:
    """Give a `tokens` table made before version 3 its `created` column (idempotent)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(tokens)")}
    if "created" not in columns:
        db.execute("ALTER TABLE tokens ADD COLUMN created REAL")


def add_moves_tables(db: sqlite3.Connection) -> None:
    """Create the tables of `MOVES_SCHEMA` (idempotent)."""
    for statement in MOVES_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


@dataclass(frozen=True)
class HostHealth:
    """A host's health as the failure detector last saw it, and whether it is drained."""

    name: str
    health: str = "up"
    since: float | None = None
    drained: bool = False
    note: str | None = None


def short_name(name: str) -> str:
    """The name a VAP's owner gave it (`alice/web` -> `web`)."""
    return name.partition("/")[2] or name


def old_layout_active(db: sqlite3.Connection) -> list[str]:
    """CVL paths of active VAPs in a database of the old layout (VAPs keyed by CVL path)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(vaps)")}
    if "cvl_path" not in columns:
        return []
    return [
        r[0] for r in db.execute(f"SELECT cvl_path FROM vaps WHERE status IN {ACTIVE} ORDER BY id")
    ]


def vaps_by_name(db: sqlite3.Connection) -> None:
    """Migrate a database of the old layout (VAPs keyed by CVL path) to VAPs by name, inside
    the caller's transaction; nothing to do on a new one.

    Each CVL path's newest record becomes VAP `owner/<file stem>` (made unique with `-2`, `-3`,
    ...), older records of the same path are dropped (their events stay), history and failed
    versions are renamed alike. Refused while a VAP of the old layout is active: its disks
    lie next to its CVL file, where the new layout never looks (README, "Migration").
    """
    columns = {r[1] for r in db.execute("PRAGMA table_info(vaps)")}
    if "cvl_path" not in columns:
        return
    active = old_layout_active(db)
    if active:
        raise DatabaseRefused(old_layout_refusal(active))
    names: dict[str, str] = {}
    taken: set[str] = set()
    rows = db.execute("SELECT id, cvl_path, owner FROM vaps ORDER BY id DESC").fetchall()
    newest: dict[str, tuple[int, str]] = {}
    for vap_id, path, owner in rows:
        if path in newest:
            db.execute("DELETE FROM vaps WHERE id=?", (vap_id,))
        else:
            newest[path] = (vap_id, owner)
    renamed: list[tuple[str, int]] = []
    for path, (vap_id, owner) in sorted(newest.items(), key=lambda item: item[1][0]):
        stem = re.sub(r"[^A-Za-z0-9._-]", "-", PurePosixPath(path).stem).lstrip("._-") or "vap"
        stem = stem[:56]
        candidate, n = f"{owner}/{stem}", 1
        while candidate in taken:
            n += 1
            candidate = f"{owner}/{stem}-{n}"
        taken.add(candidate)
        names[path] = candidate
        renamed.append((candidate, vap_id))
    db.execute("DROP INDEX IF EXISTS vaps_active")
    db.execute("ALTER TABLE vaps RENAME COLUMN cvl_path TO name")
    db.executemany("UPDATE vaps SET name=? WHERE id=?", renamed)
    for table in ("history", "failed_versions"):
        if "cvl_path" in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} RENAME COLUMN cvl_path TO name")
            db.executemany(
                f"UPDATE {table} SET name=? WHERE name=?", [(n, p) for p, n in names.items()]
            )


def old_layout_refusal(active: list[str]) -> str:
    """How to recover from a state directory of the old layout with active VAPs."""
    return (
        f"the state database holds {len(active)} active VAP(s) of the old layout, keyed by CVL "
        f"path ({', '.join(active[:5])}); their disks lie next to those files, which this "
        "version never uses. Stop them with the previous version of the utility (cui stop "
        "PATH), then start this version: stopped VAPs are migrated to names (README, "
        "'Migration')"
    )


class Store:
    """The state database. Thread-safe: one connection per thread, writes serialised by SQLite."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "utility.sqlite3"
        # The state directory is traversable (qemu reads the disk cache inside it); the database
        # is the owner's alone, and SQLite gives its -wal and -shm files the same mode.
        self.path.touch(mode=0o600, exist_ok=True)
        self.path.chmod(0o600)
        self._local = threading.local()
        self._parsed: dict[str, VapState] = {}
        with self.transaction() as db:
            vaps_by_name(db)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            add_token_created(db)
            add_moves_tables(db)
            add_host_underlay(db)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locking) transaction, committed on success, rolled back on error."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        killpoint.step("commit")

    def read(self) -> sqlite3.Connection:
        """A connection for reads outside a transaction."""
        return self._db()

    # -- hosts ----------------------------------------------------------------------------------

    def add_host(self, host: HostRow) -> None:
        """Register a host; Conflict if the name exists."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM hosts WHERE name=?", (host.name,)).fetchone():
                raise Conflict(f"host {host.name} is already registered")
            db.execute(
                "DELETE FROM hosts WHERE embedded=1 AND NOT EXISTS "
                "(SELECT 1 FROM vms v JOIN vaps a ON a.id=v.vap_id WHERE v.host=hosts.name "
                f"AND a.status IN {ACTIVE})"
            )
            if host.underlay is not None:
                holder = db.execute(
                    "SELECT name FROM hosts WHERE underlay=?", (host.underlay,)
                ).fetchone()
                if holder:
                    raise Conflict(f"host {holder[0]} already has underlay {host.underlay}")
            db.execute(
                "INSERT INTO hosts (name, uri, memory, max_vms, embedded, underlay) "
                "VALUES (?,?,?,?,?,?)",
                (
                    host.name,
                    host.uri,
                    host.memory,
                    host.max_vms,
                    int(host.embedded),
                    host.underlay,
                ),
            )

    def hosts(self) -> list[HostRow]:
        """Every registered host by name."""
        rows = self.read().execute("SELECT * FROM hosts ORDER BY name").fetchall()
        return [
            HostRow(
                r["name"], r["uri"], r["memory"], r["max_vms"], bool(r["embedded"]), r["underlay"]
            )
            for r in rows
        ]

    def remove_host(self, name: str) -> None:
        """Forget a host; refused while it runs VMs of an active VAP."""
        with self.transaction() as db:
            if not db.execute("SELECT 1 FROM hosts WHERE name=?", (name,)).fetchone():
                raise NotFound(f"no host named {name}")
            busy = db.execute(
                "SELECT COUNT(*) FROM vms v JOIN vaps a ON a.id=v.vap_id WHERE v.host=? "
                f"AND a.status IN {ACTIVE} AND v.state NOT IN {NOT_RUNNING}",
                (name,),
            ).fetchone()[0]
            if busy:
                raise Conflict(f"host {name} runs {busy} VM(s); stop them before removing it")
            db.execute("DELETE FROM hosts WHERE name=?", (name,))
            db.execute("DELETE FROM host_health WHERE name=?", (name,))

    def usage(self, db: sqlite3.Connection | None = None) -> dict[str, tuple[int, int]]:
        """host -> (memory in use, VMs) over the VMs of active VAPs (recomputed, never cached)."""
        db = db or self.read()
        rows = db.execute(
            "SELECT v.host, SUM(v.memory), COUNT(*) FROM vms v JOIN vaps a ON a.id=v.vap_id "
            f"WHERE a.status IN {ACTIVE} AND v.state NOT IN {NOT_RUNNING} GROUP BY v.host"
        ).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    # -- host health and drain (failure detection, moves) --------------------------------------

    def host_health(self) -> dict[str, HostHealth]:
        """Host name -> health and drain; a host never seen by the detector is `up`."""
        rows = self.read().execute("SELECT * FROM host_health").fetchall()
        known = {r["name"]: r for r in rows}
        out = {}
        for host in self.hosts():
            r = known.get(host.name)
            out[host.name] = (
                HostHealth(host.name, r["health"], r["since"], bool(r["drained"]), r["note"])
                if r
                else HostHealth(host.name)
            )
        return out

    def set_host_health(self, name: str, health: str, note: str | None = None) -> None:
        """Record a host's new health (its `since` is now)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO host_health (name, health, since, note) VALUES (?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET health=excluded.health, since=excluded.since, "
                "note=excluded.note",
                (name, health, time.time(), note),
            )

    def set_drained(self, name: str, drained: bool) -> None:
        """Close a host to new placements (drained) or reopen it."""
        with self.transaction() as db:
            if not db.execute("SELECT 1 FROM hosts WHERE name=?", (name,)).fetchone():
                raise NotFound(f"no host named {name}")
            db.execute(
                "INSERT INTO host_health (name, drained) VALUES (?,?) "
                "ON CONFLICT(name) DO UPDATE SET drained=excluded.drained",
                (name, int(drained)),
            )

    def move_vm(self, vap_id: int, path: str, host: str, state: VapState) -> None:
        """Record in one transaction that a VM now runs on `host`, with the VAP's new state."""
        with self.transaction() as db:
            db.execute("UPDATE vms SET host=? WHERE vap_id=? AND path=?", (host, vap_id, path))
            self.set_vap(vap_id, state=state, db=db)

    def record_restore(self, vap_id: int, path: str, source: str) -> None:
        """Remember where a VM restored on another host got its data disks from."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO vm_restores VALUES (?,?,?,?)",
                (vap_id, path, time.time(), source),
            )

    def restores(self, vap_id: int | None = None) -> dict[int, dict[str, dict[str, object]]]:
        """VAP id -> path -> {at, source} for each VM restored after its host failed (of one
        VAP, or of all in one query)."""
        sql = "SELECT vap_id, path, at, source FROM vm_restores"
        rows = self.read().execute(
            sql + (" WHERE vap_id=?" if vap_id is not None else ""),
            (vap_id,) if vap_id is not None else (),
        )
        out: dict[int, dict[str, dict[str, object]]] = {}
        for r in rows:
            out.setdefault(r["vap_id"], {})[r["path"]] = {"at": r["at"], "source": r["source"]}
        return out

    # -- pools ----------------------------------------------------------------------------------

    def add_vlans(self, vlans: list[int]) -> int:
        """Add VLAN tags to the pool; returns how many were new."""
        with self.transaction() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO vlans (vlan) VALUES (?)", [(v,) for v in vlans])
            return db.total_changes - before

    def add_public_ips(self, ips: list[str]) -> int:
        """Add public IPs to the pool; returns how many were new."""
        with self.transaction() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO public_ips (ip) VALUES (?)", [(i,) for i in ips])
            return db.total_changes - before

    def pools(self) -> dict[str, list[dict[str, object]]]:
        """Both pools with their holders."""
        db = self.read()
        return {
            "vlans": [dict(r) for r in db.execute("SELECT * FROM vlans ORDER BY vlan")],
            "public_ips": [dict(r) for r in db.execute("SELECT * FROM public_ips ORDER BY ip")],
        }

    # -- blacklist ------------------------------------------------------------------------------

    def blacklist_add(self, url: str, version: str) -> None:
        """Blacklist one version of a repository, or all of them ("all")."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO blacklist VALUES (?,?)", (url.rstrip("/"), version))

    def blacklist_remove(self, url: str, version: str) -> None:
        """Remove an entry; NotFound if absent."""
        with self.transaction() as db:
            cur = db.execute(
                "DELETE FROM blacklist WHERE url=? AND version=?", (url.rstrip("/"), version)
            )
            if cur.rowcount == 0:
                raise NotFound(f"{url} {version} is not blacklisted")

    def blacklist(self) -> list[tuple[str, str]]:
        """Every (url, version|"all")."""
        return [
            (r[0], r[1])
            for r in self.read().execute("SELECT url, version FROM blacklist ORDER BY url, version")
        ]

    # -- tokens ---------------------------------------------------------------------------------

    def add_token(self, name: str, role: str, token: str) -> None:
        """Record a token's digest for `name` with `role`."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM tokens WHERE name=?", (name,)).fetchone():
                raise Conflict(f"a token named {name} exists")
            db.execute(
                "INSERT INTO tokens (digest, name, role, created) VALUES (?,?,?,?)",
                (token_digest(token), name, role, time.time()),
            )

    def tokens(self) -> list[dict[str, object]]:
        """Every token's name, role and creation time (None for tokens older than the column),
        by name; never the digest."""
        rows = self.read().execute("SELECT name, role, created FROM tokens ORDER BY name")
        return [dict(r) for r in rows]

    def revoke_token(self, name: str) -> None:
        """Delete the token of `name` (NotFound if there is none)."""
        with self.transaction() as db:
            if db.execute("DELETE FROM tokens WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"no token named {name}")

    def who(self, token: str) -> tuple[str, str] | None:
        """(name, role) for a token, or None."""
        row = (
            self.read()
            .execute("SELECT name, role FROM tokens WHERE digest=?", (token_digest(token),))
            .fetchone()
        )
        return (row[0], row[1]) if row else None

    # -- VAPs -----------------------------------------------------------------------------------

    def _state(self, text: str | None) -> VapState | None:
        """The state stored as `text`, parsed once per distinct text: states are immutable, and
        `cui status` of a thousand VAPs would otherwise parse a thousand of them each time."""
        if not text:
            return None
        state = self._parsed.get(text)
        if state is None:
            if len(self._parsed) >= PARSED_STATES:
                self._parsed.clear()
            state = self._parsed[text] = from_json(text)
        return state

    def _vap(self, row: sqlite3.Row) -> VapRow:
        return VapRow(
            row["id"],
            row["name"],
            row["owner"],
            row["status"],
            self._state(row["state_json"]),
            row["error"],
            row["updated"],
        )

    def new_vap(self, db: sqlite3.Connection, name: str, owner: str) -> int:
        """The VAP `name` (`owner/short name`) in status 'starting' (inside the caller's
        transaction): a stopped or failed VAP of that name is started again under its id (its
        storage, data disks included, is kept by id); a new name gets a new id."""
        row = db.execute("SELECT id, status FROM vaps WHERE name=?", (name,)).fetchone()
        if row is not None:
            if row["status"] in ACTIVE:
                raise Conflict(
                    f"{short_name(name)} is already running (stop it, or use cui update)"
                )
            db.execute(
                "UPDATE vaps SET status='starting', state_json=NULL, error=NULL, updated=? "
                "WHERE id=?",
                (time.time(), row["id"]),
            )
            return int(row["id"])
        cur = db.execute(
            "INSERT INTO vaps (name, owner, status, updated) VALUES (?,?,'starting',?)",
            (name, owner, time.time()),
        )
        return int(cur.lastrowid or 0)

    def vap(self, vap_id: int) -> VapRow:
        """One VAP by id."""
        row = self.read().execute("SELECT * FROM vaps WHERE id=?", (vap_id,)).fetchone()
        if row is None:
            raise NotFound(f"no VAP with id {vap_id}")
        return self._vap(row)

    def vap_by_name(self, name: str) -> VapRow | None:
        """The VAP named `name` (`owner/short name`), or None."""
        row = self.read().execute("SELECT * FROM vaps WHERE name=?", (name,)).fetchone()
        return self._vap(row) if row else None

    def vaps(self, statuses: tuple[str, ...] | None = None) -> list[VapRow]:
        """Every VAP by id (optionally only those in `statuses`)."""
        rows = self.read().execute("SELECT * FROM vaps ORDER BY id").fetchall()
        vaps = [self._vap(r) for r in rows]
        return [v for v in vaps if statuses is None or v.status in statuses]

    # -- bundles --------------------------------------------------------------------------------

    def save_bundle(self, digest: str, root_dir: str, root: str, manifest: dict[str, str]) -> None:
        """Record a bundle's manifest (its objects are written first); idempotent."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO bundles VALUES (?,?,?,?,?)",
                (digest, root_dir, root, json.dumps(manifest, sort_keys=True), time.time()),
            )

    def bundle(self, digest: str) -> tuple[str, str, dict[str, str]]:
        """(root_dir, root, manifest) of a stored bundle."""
        row = self.read().execute("SELECT * FROM bundles WHERE digest=?", (digest,)).fetchone()
        if row is None:
            raise NotFound(f"no stored bundle {digest}")
        return str(row["root_dir"]), str(row["root"]), dict(json.loads(row["manifest"]))

    def add_vap_bundle(self, vap_id: int, digest: str, db: sqlite3.Connection | None = None) -> int:
        """Record that VAP `vap_id` now runs bundle `digest` (unless it already does); the
        version number (1, 2, ...) of the VAP's bundle."""

        def write(tx: sqlite3.Connection) -> int:
            last = tx.execute(
                "SELECT seq, digest FROM vap_bundles WHERE vap_id=? ORDER BY seq DESC LIMIT 1",
                (vap_id,),
            ).fetchone()
            if last is not None and last["digest"] == digest:
                return int(last["seq"])
            seq = int(last["seq"]) + 1 if last is not None else 1
            tx.execute(
                "INSERT INTO vap_bundles VALUES (?,?,?,?)", (vap_id, seq, digest, time.time())
            )
            return seq

        if db is not None:
            return write(db)
        with self.transaction() as tx:
            return write(tx)

    def vap_bundles(self, vap_id: int) -> list[dict[str, object]]:
        """Every bundle version of a VAP, oldest first: seq, digest, at."""
        rows = self.read().execute(
            "SELECT seq, digest, at FROM vap_bundles WHERE vap_id=? ORDER BY seq", (vap_id,)
        )
        return [dict(r) for r in rows]

    def set_vap(
        self,
        vap_id: int,
        *,
        status: str | None = None,
        state: VapState | None = None,
        error: str | None = None,
        db: sqlite3.Connection | None = None,
    ) -> None:
        """Update a VAP's status, stored (masked) state, and error."""
        sets: list[str] = ["updated=?"]
        args: list[object] = [time.time()]
        if status is not None:
            sets.append("status=?")
            args.append(status)
        if state is not None:
            sets.append("state_json=?")
            args.append(to_json(state))
        if error is not None or status in ("running",):
            sets.append("error=?")
            args.append(error)
        sql = f"UPDATE vaps SET {', '.join(sets)} WHERE id=?"
        if db is not None:
            db.execute(sql, (*args, vap_id))
        else:
            with self.transaction() as tx:
                tx.execute(sql, (*args, vap_id))

    def release(self, db: sqlite3.Connection, vap_id: int) -> None:
        """Free every VLAN, public IP, address and VM record of a VAP."""
        db.execute("UPDATE vlans SET vap_id=NULL, segment=NULL WHERE vap_id=?", (vap_id,))
        db.execute("UPDATE public_ips SET vap_id=NULL, iface=NULL WHERE vap_id=?", (vap_id,))
        db.execute("DELETE FROM addresses WHERE vap_id=?", (vap_id,))
        db.execute("DELETE FROM vms WHERE vap_id=?", (vap_id,))

    def set_secret_keys(
        self, vap_id: int, keys: list[str], db: sqlite3.Connection | None = None
    ) -> None:
        """Record which parameter keys of a VAP got sensitive values from its user (the keys
        only: the values live in the daemon's memory), so a restart knows what it lost."""

        def write(tx: sqlite3.Connection) -> None:
            tx.execute("DELETE FROM secret_keys WHERE vap_id=?", (vap_id,))
            tx.executemany(
                "INSERT INTO secret_keys VALUES (?,?)", [(vap_id, k) for k in sorted(set(keys))]
            )

        if db is not None:
            write(db)
        else:
            with self.transaction() as tx:
                write(tx)

    def secret_keys(self, vap_id: int) -> set[str]:
        """The keys `set_secret_keys` recorded for a VAP."""
        return {
            r[0]
            for r in self.read().execute("SELECT key FROM secret_keys WHERE vap_id=?", (vap_id,))
        }

    # -- VMs ------------------------------------------------------------------------------------

    def vms(self, vap_id: int) -> list[VmRow]:
        """The VM records of a VAP by boot order then path."""
        rows = (
            self.read()
            .execute(
                "SELECT * FROM vms WHERE vap_id=? ORDER BY boot_seq IS NULL, boot_seq, path",
                (vap_id,),
            )
            .fetchall()
        )
        return [VmRow(**dict(r)) for r in rows]

    def vms_of(self, vap_ids: list[int]) -> dict[int, list[VmRow]]:
        """The VM records of several VAPs in one query (status of all VAPs), each list ordered
        as `vms` orders it."""
        out: dict[int, list[VmRow]] = {i: [] for i in vap_ids}
        if not vap_ids:
            return out
        rows = self.read().execute(
            "SELECT * FROM vms ORDER BY vap_id, boot_seq IS NULL, boot_seq, path"
        )
        for r in rows:
            if r["vap_id"] in out:
                out[r["vap_id"]].append(VmRow(**dict(r)))
        return out

    def set_vm(
        self,
        vap_id: int,
        path: str,
        state: str,
        *,
        started: float | None = None,
        boot: bool = False,
    ) -> None:
        """Record a VM's state; `boot` assigns the next boot sequence number of its VAP."""
        with self.transaction() as db:
            if boot:
                seq = db.execute(
                    "SELECT COALESCE(MAX(boot_seq), 0) + 1 FROM vms WHERE vap_id=?", (vap_id,)
                ).fetchone()[0]
                db.execute(
                    "UPDATE vms SET state=?, started=?, boot_seq=? WHERE vap_id=? AND path=?",
                    (state, started, seq, vap_id, path),
                )
            else:
                db.execute(
                    "UPDATE vms SET state=? WHERE vap_id=? AND path=?", (state, vap_id, path)
                )

    def all_addresses(self) -> list[tuple[str, str, int, str]]:
        """Every held (address, kind, vap id, path): what the tests check for duplicates."""
        return [
            tuple(r)
            for r in self.read().execute(  # type: ignore[misc]
                "SELECT address, kind, vap_id, path FROM addresses ORDER BY address"
            )
        ]

    # -- events ---------------------------------------------------------------------------------

    def event(self, vap_id: int | None, kind: str, text: str) -> None:
        """Append to the event log (never a sensitive value: callers pass paths and keys)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (at, vap_id, kind, text) VALUES (?,?,?,?)",
                (time.time(), vap_id, kind, text),
            )

    def set_restart_policy(self, db: sqlite3.Connection, vap_id: int, policy: str) -> None:
        """Record (in transaction `db`) whether VAP `vap_id`'s crashed VMs are restarted
        (`always`) or not (`never`)."""
        db.execute(
            "INSERT OR REPLACE INTO restart_policy (vap_id, policy) VALUES (?,?)", (vap_id, policy)
        )

    def restart_policies(self) -> dict[int, str]:
        """Every recorded restart policy by VAP id (a VAP without one has `always`)."""
        rows = self.read().execute("SELECT vap_id, policy FROM restart_policy")
        return {int(r[0]): str(r[1]) for r in rows}

    def set_local_files(self, db: sqlite3.Connection, vap_id: int, allowed: bool) -> None:
        """Record (in transaction `db`) whether evaluations of VAP `vap_id` may read `file:`
        imports outside its bundle from the daemon's file system (started by an
        administrator, whose file system it is)."""
        db.execute("DELETE FROM local_files WHERE vap_id=?", (vap_id,))
        if allowed:
            db.execute("INSERT INTO local_files (vap_id) VALUES (?)", (vap_id,))

    def local_files(self, vap_id: int) -> bool:
        """What `set_local_files` recorded (False when nothing was)."""
        row = self.read().execute("SELECT 1 FROM local_files WHERE vap_id=?", (vap_id,))
        return row.fetchone() is not None

    def restart_policy(self, vap_id: int) -> str:
        """The VAP's restart policy (`always` unless one was recorded)."""
        row = (
            self.read()
            .execute("SELECT policy FROM restart_policy WHERE vap_id=?", (vap_id,))
            .fetchone()
        )
        return str(row[0]) if row else "always"

    def add_history(
        self,
        name: str,
        trigger: str,
        actions: list[str],
        versions: dict[str, list[str | None]],
        result: str,
    ) -> None:
        """Record one update: when, why, what, from and to which versions, and how it ended."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO history (at, name, trigger, actions, versions, result) "
                "VALUES (?,?,?,?,?,?)",
                (time.time(), name, trigger, json.dumps(actions), json.dumps(versions), result),
            )

    def mark_failed(self, name: str, url: str, version: str) -> None:
        """Remember that `version` of `url` never became ready in this VAP (no automatic retry)."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO failed_versions VALUES (?,?,?,?)",
                (name, url, version, time.time()),
            )

    def failed_versions(self, name: str) -> set[tuple[str, str]]:
        """(url, version) pairs that failed in this VAP."""
        return {
            (r[0], r[1])
            for r in self.read().execute(
                "SELECT url, version FROM failed_versions WHERE name=?", (name,)
            )
        }

    def history(self, name: str | None = None) -> list[dict[str, object]]:
        """Every recorded update, oldest first (of one VAP if given)."""
        sql = "SELECT * FROM history" + (" WHERE name=?" if name else "")
        rows = self.read().execute(sql + " ORDER BY id", (name,) if name else ())
        return [
            {**dict(r), "actions": json.loads(r["actions"]), "versions": json.loads(r["versions"])}
            for r in rows
        ]

    def events(self, vap_id: int | None = None) -> list[dict[str, object]]:
        """The event log, oldest first."""
        sql = "SELECT * FROM events" + (" WHERE vap_id=?" if vap_id is not None else "")
        args = (vap_id,) if vap_id is not None else ()
        return [dict(r) for r in self.read().execute(sql + " ORDER BY id", args)]

    # -- publish events (replay guard) ----------------------------------------------------------

    def remember_event(self, event_id: str, at: float, forget_before: float) -> bool:
        """Record publish event `event_id` (timestamp `at`); False if it was already recorded.

        Ids of events with a timestamp before `forget_before` are forgotten first (such events
        are refused as stale anyway), so the table holds one window of ids.
        """
        with self.transaction() as db:
            db.execute("DELETE FROM seen_events WHERE at < ?", (forget_before,))
            added = db.execute(
                "INSERT OR IGNORE INTO seen_events (id, at) VALUES (?, ?)", (event_id, at)
            )
            return added.rowcount == 1
