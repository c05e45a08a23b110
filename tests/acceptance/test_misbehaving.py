"""Handlers that misbehave, run by real `joblot serve` worker processes on SQLite and PostgreSQL:
each misbehaviour ends one item, never its job or its neighbours."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from .conftest import MISBEHAVING_APP, count_rows, group_members


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


def _worker_pids(server: Any) -> set[int]:
    return set(group_members(server.proc.pid)) - {server.proc.pid}


def test_a_hung_handler_fails_as_timeout_and_sigterm_leaves_no_process(
    db_url: str, start_server: Any
) -> None:
    server = start_server(workers=1, db=db_url, JOBLOT_APP=MISBEHAVING_APP)
    first_workers = _worker_pids(server)
    items: list[dict[str, Any]] = [{"id": i, "seconds": 0.05} for i in range(12)]
    items[3] = {"id": 3, "hang": True}
    job = server.submit("test.hang", items)
    final = server.wait(job["id"], timeout=60)
    assert final["status"] == "completed" and final["progress"] == 12
    failed = [e for e in final["results"] if not e["success"]]
    assert [(e["index"], e["error"]) for e in failed] == [(3, "Timeout")]
    assert "timeout of 2 s" in failed[0]["details"]
    # The stuck thread cannot be stopped: its worker made way for a fresh process.
    deadline = time.monotonic() + 15
    while _worker_pids(server) & first_workers or not _worker_pids(server):
        assert time.monotonic() < deadline, "the worker with a stuck thread was not replaced"
        time.sleep(0.1)

    # An async handler is cancelled at its timeout: its worker goes on.
    workers = _worker_pids(server)
    job = server.submit("test.hang_async", [{"id": 0, "hang": True}, {"id": 1}])
    final = server.wait(job["id"], timeout=30)
    assert [e.get("error") for e in final["results"]] == ["Timeout", None]
    assert _worker_pids(server) == workers

    # SIGTERM with an item hung for good: every process is gone within 20 s, item requeued.
    hung = server.submit("test.hang_long", [{"id": 0, "hang": True}])
    server.wait(hung["id"], until=("working",))
    time.sleep(0.5)
    stopped_at = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    while group_members(server.proc.pid):
        assert time.monotonic() - stopped_at < 20, "processes outlived serve's SIGTERM"
        time.sleep(0.1)
    assert count_rows(db_url, "leases", hung["id"]) == 0
    assert count_rows(db_url, "items", hung["id"], "state = 'leased'") == 0
    assert count_rows(db_url, "items", hung["id"]) == 1  # back in the queue, not lost


def test_only_the_item_that_kills_its_worker_fails_with_worker_lost(
    db_url: str, start_server: Any
) -> None:
    server = start_server(workers=1, db=db_url, JOBLOT_APP=MISBEHAVING_APP)
    items: list[dict[str, Any]] = [{"id": i, "seconds": 0.01} for i in range(200)]
    items[50] = {"id": 50, "exit": True}
    job = server.submit("test.exit", items)
    final = server.wait(job["id"], timeout=120)
    assert (final["status"], final["progress"]) == ("completed", 200)
    failed = [e for e in final["results"] if not e["success"]]
    assert [(e["index"], e["error"]) for e in failed] == [(50, "WorkerLost")]
    assert "3 times" in failed[0]["details"]
    log = server.log.read_text()
    assert f"job {job['id']} item 50 is on its last attempt" in log
