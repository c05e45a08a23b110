"""Handlers that misbehave, run by real `joblot serve` worker processes on SQLite and PostgreSQL:
each misbehaviour ends one item, never its job or its neighbours."""

from __future__ import annotations

from typing import Any

from .conftest import MISBEHAVING_APP


def test_a_nul_in_a_message_is_stored_and_the_job_completes(db_url: str, start_server: Any) -> None:
    server = start_server(workers=1, db=db_url, JOBLOT_APP=MISBEHAVING_APP)
    job = server.submit("test.message", [{"id": 1, "text": "before\x00after"}])
    final = server.wait(job["id"], timeout=30)
    assert final["status"] == "completed"
    assert final["message"] == "before\ufffdafter"  # PostgreSQL text cannot hold NUL
    assert final["results"] == [{"index": 0, "id": 1, "reported": True, "success": True}]
