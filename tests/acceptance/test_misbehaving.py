"""Handlers that misbehave, run by real `joblot serve` worker processes on SQLite and PostgreSQL:
each misbehaviour ends one item, never its job or its neighbours."""

from __future__ import annotations

import time
from typing import Any

from .conftest import MISBEHAVING_APP, count_rows


def test_a_nul_in_a_message_is_stored_and_the_job_completes(db_url: str, start_server: Any) -> None:
    server = start_server(workers=1, db=db_url, JOBLOT_APP=MISBEHAVING_APP)
    job = server.submit("test.message", [{"id": 1, "text": "before\x00after"}])
    final = server.wait(job["id"], timeout=30)
    assert final["status"] == "completed"
    assert final["message"] == "before\ufffdafter"  # PostgreSQL text cannot hold NUL
    assert final["results"] == [{"index": 0, "id": 1, "reported": True, "success": True}]


def test_an_abort_records_the_aborting_item_and_releases_its_lease_at_once(
    db_url: str, start_server: Any
) -> None:
    # Leases of 30 s: a lease left to lapse would still be there when the test looks.
    server = start_server(
        workers=1, db=db_url, JOBLOT_APP=MISBEHAVING_APP, JOBLOT_LEASE_SECONDS="30"
    )
    items: list[dict[str, Any]] = [{"id": i, "seconds": 0.02} for i in range(40)]
    items[10] = {"id": 10, "abort": "the account is locked"}
    job = server.submit("test.abort", items)
    final = server.wait(job["id"], timeout=30)
    assert final["status"] == "failed" and final["message"] == "the account is locked"
    aborted = [e for e in final["results"] if not e["success"]]
    assert aborted == [
        {
            "index": 10,
            "id": 10,
            "success": False,
            "error": "Aborted",
            "details": "the account is locked",
        }
    ]
    deadline = time.monotonic() + 2
    while count_rows(db_url, "leases", job["id"]):
        assert time.monotonic() < deadline, "the aborted batch's lease was not released"
        time.sleep(0.05)
    assert count_rows(db_url, "items", job["id"], "state = 'leased'") == 0
    settled = server.status(job["id"])
    assert (settled["status"], settled["message"]) == ("failed", "the account is locked")
