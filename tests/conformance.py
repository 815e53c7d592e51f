"""Conformance rows: tests marked `conformance(client, operation)` record what a third-party
client did against our servers and files, and `scripts/conformance.py` turns the records into
the README's conformance table (so the table is produced by the tests, never typed by hand).

    @pytest.mark.conformance("git", "clone --depth 1 ({server})")
    def test_…(server): …

`{name}` in the operation is filled from the test's parameters. Each finished test writes one
JSON file under `artifacts/conformance/` (safe under xdist: one file per test).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

RECORDS = Path(__file__).resolve().parent.parent / "artifacts" / "conformance"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[Any]:
    """Record the outcome of a conformance test's call phase (or of a failed/skipped setup)."""
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("conformance")
    if marker is None or not (report.when == "call" or report.outcome != "passed"):
        return
    client, operation = marker.args
    params = getattr(getattr(item, "callspec", None), "params", {})
    row = {
        "client": client,
        "operation": operation.format(**{k: str(v) for k, v in params.items()}),
        "result": {"passed": "works", "failed": "FAILS", "skipped": "not run"}[report.outcome],
        "test": item.nodeid,
    }
    RECORDS.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(item.nodeid.encode()).hexdigest()[:20]
    (RECORDS / f"{name}.json").write_text(json.dumps(row))
