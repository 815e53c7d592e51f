"""Token names, the token list and revocation in the state layer (`Store`) and the policy."""

from __future__ import annotations

import sqlite3
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from utility.adapters.db_check import migrate
from utility.adapters.store import Store
from utility.errors import NotFound, UtilityError
from utility.service.administration import add_token
from utility.service.manager import ClusterManager
from utility.service.policy import RESERVED_NAMES, TOKEN_NAME, check_token_name

ALLOWED = set(string.ascii_lowercase + string.digits + "._-")


@given(st.text(max_size=80))
def test_a_token_name_is_accepted_exactly_when_well_formed_and_not_reserved(name: str) -> None:
    good = (
        0 < len(name) <= 63
        and name[0] in string.ascii_lowercase
        and set(name) <= ALLOWED
        and name not in RESERVED_NAMES
    )
    if good:
        check_token_name(name)
    else:
        with pytest.raises(UtilityError, match="token name"):
            check_token_name(name)


@given(st.from_regex(TOKEN_NAME, fullmatch=True))
def test_every_name_of_the_pattern_but_the_reserved_ones_passes(name: str) -> None:
    if name in RESERVED_NAMES:
        with pytest.raises(UtilityError, match="reserved"):
            check_token_name(name)
    else:
        check_token_name(name)


def test_reserved_names_are_the_internal_callers() -> None:
    from utility.service.autoupdate import SYSTEM
    from utility.web.api import LOCAL_ADMIN

    assert {LOCAL_ADMIN.name, SYSTEM.name} == RESERVED_NAMES


def test_tokens_are_listed_without_digests_and_revoked(tmp_path: Path) -> None:
    store = Store(tmp_path)
    token = add_token(store, "alice", "user")
    with pytest.raises(UtilityError, match="reserved"):
        add_token(store, "local", "admin")
    rows = store.tokens()
    assert [(r["name"], r["role"]) for r in rows] == [("alice", "user")]
    assert set(rows[0]) == {"name", "role", "created"}
    assert store.who(token) == ("alice", "user")
    store.revoke_token("alice")
    assert store.who(token) is None and store.tokens() == []
    with pytest.raises(NotFound, match="no token named alice"):
        store.revoke_token("alice")


def test_an_old_tokens_table_gains_created_and_its_local_token_is_refused(
    tmp_path: Path,
) -> None:
    old = sqlite3.connect(tmp_path / "utility.sqlite3")
    old.execute(
        "CREATE TABLE tokens (digest TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, "
        "role TEXT NOT NULL CHECK (role IN ('admin', 'user')))"
    )
    from utility.adapters.store import token_digest

    old.execute("INSERT INTO tokens VALUES (?, 'local', 'user')", (token_digest("old"),))
    old.commit()
    old.close()
    manager = ClusterManager(tmp_path)
    assert migrate(manager.store.read()) >= 3
    assert manager.store.tokens() == [{"name": "local", "role": "user", "created": None}]
    assert manager.store.who("old") == ("local", "user")  # stored, but never a caller:
    assert manager.authenticate("old") is None
    manager.close()
