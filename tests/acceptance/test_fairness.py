"""Fair to fast jobs: a worker sizes its claims job type by job type, so a job of fast items
is not held to the pace of a job of slow items beside it (real `joblot serve`, both backends)."""

from __future__ import annotations

import time
from typing import Any


def test_a_fast_job_finishes_while_a_slow_job_keeps_the_workers_busy(
    db_url: str, start_server: Any
) -> None:
    server = start_server(workers=1, db=db_url)
    slow = server.submit("demo.sleep", [{"id": i, "seconds": 1} for i in range(200)])
    server.wait(slow["id"], until=("working",), timeout=30)
    time.sleep(1.5)  # the worker has measured the slow items and holds a batch of them
    fast = server.submit("demo.echo", [{"id": i} for i in range(1000)])
    done = server.wait(fast["id"], timeout=120)
    assert (done["status"], done["progress"]) == ("completed", 1000)
    # The slow job (200 s of work on 4 threads) is still going: the fast one did not have to
    # wait for it, nor go at its pace of a few items per second.
    slow_now = server.status(slow["id"])
    assert slow_now["status"] == "working", slow_now
    assert slow_now["progress"] < 200
    server.http.post(f"/api/v2/job_statuses/{slow['id']}/cancel")
