"""Retries of handler errors a job type names, with backoff, by real `joblot serve` workers on
SQLite and PostgreSQL: an item waiting for its retry holds no lease, and a failed entry says
how many attempts it took."""

from __future__ import annotations

import time
from typing import Any

from .conftest import MISBEHAVING_APP, count_rows


def _waiting_without_a_lease(db_url: str, job_id: str) -> bool:
    waiting = count_rows(db_url, "items", job_id, "state = 'pending' AND retries > 0")
    return waiting > 0 and count_rows(db_url, "items", job_id, "state = 'leased'") == 0


def test_errors_a_job_type_retries_are_retried_with_backoff_and_counted(
    db_url: str, start_server: Any
) -> None:
    server = start_server(workers=1, db=db_url, JOBLOT_APP=MISBEHAVING_APP)
    items: list[dict[str, Any]] = [
        {"id": 0, "fail_times": 1},
        {"id": 1, "fail_times": 9},
        {"id": 2, "raise": "ValueError"},
        {"id": 3},
    ]
    job = server.submit("test.flaky", items)
    deadline = time.monotonic() + 30
    while not _waiting_without_a_lease(db_url, job["id"]):  # backing off, holding nothing
        assert server.status(job["id"])["status"] != "completed", "no item waited for a retry"
        assert time.monotonic() < deadline, "no item was seen waiting for its retry"
        time.sleep(0.02)
    final = server.wait(job["id"], timeout=60)
    assert (final["status"], final["progress"]) == ("completed", 4)
    first, given_up, not_retried, fine = final["results"]
    assert first == {"index": 0, "id": 0, "success": True, "attempt": 2}
    assert given_up == {
        "index": 1,
        "id": 1,
        "success": False,
        "error": "ConnectionError",
        "details": "the service did not answer (attempt 3)",
        "attempts": 3,
    }
    assert not_retried == {
        "index": 2,
        "id": 2,
        "success": False,
        "error": "ValueError",
        "details": "not worth retrying",
    }
    assert fine == {"index": 3, "id": 3, "success": True, "attempt": 1}
    assert count_rows(db_url, "leases", job["id"]) == 0
