"""A deployment without worker processes still purges expired jobs: the API process takes its
turn at the cluster-wide chores."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import Any


def test_an_api_node_without_workers_purges_expired_jobs(start_server: Any) -> None:
    first = start_server(workers=0, JOBLOT_RETENTION_SECONDS="1")
    job = first.submit("demo.echo", [{"id": i} for i in range(3)])
    cancelled = first.http.post(f"/api/v2/job_statuses/{job['id']}/cancel")
    assert cancelled.status_code == 200  # finished now: it expires a second from now
    first.stop()
    time.sleep(1.1)
    second = start_server(workers=0, db=first.db, JOBLOT_RETENTION_SECONDS="1")
    deadline = time.monotonic() + 30  # its first maintenance round purges
    while "purged 1 jobs past their retention" not in second.log.read_text():
        assert time.monotonic() < deadline, second.log.read_text()
        time.sleep(0.1)
    path = first.db.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
