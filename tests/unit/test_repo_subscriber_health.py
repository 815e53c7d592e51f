"""When a failing subscriber is suspended (`reposerver.subscriber_health`)."""

from __future__ import annotations

from pathlib import Path

from reposerver import subscriber_health as health

URL = "http://127.0.0.1:9/gone"


def test_suspension_needs_both_the_time_and_the_attempts(tmp_path: Path) -> None:
    path = health.health_path(tmp_path / "logs")
    assert not health.record(path, URL, False, "refused", 100.0, 60.0)
    assert not health.record(path, URL, False, "refused", 200.0, 60.0)  # long, but 2 attempts
    assert health.describe(path)(URL)["status"] == "failing"
    assert health.record(path, URL, False, "refused", 201.0, 60.0)  # 3rd, 101 s after the 1st
    assert health.suspended(path) == {URL}
    state = health.describe(path)(URL)
    assert state == {
        "status": "suspended",
        "failures": 3,
        "failing_since": 100.0,
        "last_error": "refused",
        "suspended_at": 201.0,
    }

    quick = "http://127.0.0.1:9/quick"
    for t in range(10):  # many attempts within the window: failing, not suspended
        assert not health.record(path, quick, False, "refused", 100.0 + t, 60.0)
    assert health.suspended(path) == {URL}


def test_a_success_or_a_new_subscription_clears_the_record(tmp_path: Path) -> None:
    path = health.health_path(tmp_path / "logs")
    for t in (0.0, 1.0, 2.0):
        health.record(path, URL, False, "refused", t, 0.0)
    assert health.suspended(path) == {URL}
    health.clear(path, URL)
    assert health.describe(path)(URL) == {"status": "active"}
    health.record(path, URL, False, "refused", 5.0, 0.0)
    assert not health.record(path, URL, True, "204", 6.0, 0.0)
    assert health.read(path) == {}


def test_a_damaged_file_reads_as_healthy(tmp_path: Path) -> None:
    path = health.health_path(tmp_path / "logs")
    path.parent.mkdir()
    path.write_text("{not json")
    assert health.suspended(path) == set()
    assert health.describe(path)(URL) == {"status": "active"}
    health.record(path, URL, False, "refused", 1.0, 0.0)  # rewritten whole
    assert health.read(path)[URL]["failures"] == 1
