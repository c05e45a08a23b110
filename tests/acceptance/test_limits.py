"""Cluster-wide limits per job type, with real `joblot` processes on each backend: a
concurrency limit holds across worker processes, a rate limit spaces starts, a limited type
holds up no other, and a worker that dies frees its share when its lease lapses."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import start_worker

LIMITED_APP = "acceptance.limited:app"


def most_at_once(entries: list[dict[str, Any]]) -> int:
    """The most handler runs that overlapped at any instant, from their own timestamps."""
    edges = sorted(
        [(e["started"], 1) for e in entries] + [(e["ended"], -1) for e in entries],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same instant
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
def test_concurrency_2_across_three_worker_processes_runs_two_never_three(
    db_url: str, start_server: Any
) -> None:
    server = start_server(workers=3, db=db_url, JOBLOT_APP=LIMITED_APP, JOBLOT_CONCURRENCY="4")
    job = server.submit("limits.pair", [{"id": i, "seconds": 0.25} for i in range(16)])
    status = server.wait(job["id"], timeout=90)
    assert status["status"] == "completed"
    entries = server.all_results(job["id"])
    assert all(e["success"] for e in entries)
    assert most_at_once(entries) == 2


@pytest.mark.slow
def test_rate_10_a_second_over_40_items_takes_at_least_3_seconds(
    db_url: str, start_server: Any
) -> None:
    server = start_server(workers=2, db=db_url, JOBLOT_APP=LIMITED_APP)
    job = server.submit("limits.ten_a_second", [{"id": i} for i in range(40)])
    server.wait(job["id"], timeout=90)
    starts = sorted(e["started"] for e in server.all_results(job["id"]))
    assert starts[-1] - starts[0] >= 3.0
    stats = server.http.get(f"/api/v2/job_statuses/{job['id']}").json()["job_stats"]
    assert stats["failures"] == 0


def test_an_unlimited_job_behind_a_limited_one_does_not_wait_for_it(
    db_url: str, start_server: Any
) -> None:
    server = start_server(workers=1, db=db_url, JOBLOT_APP=LIMITED_APP)
    slow = server.submit("limits.one", [{"id": i, "seconds": 0.5} for i in range(12)])
    server.wait(slow["id"], until=("working",), timeout=30)
    free = server.submit("limits.free", [{"id": i} for i in range(20)])
    done = server.wait(free["id"], timeout=30)
    assert done["status"] == "completed"
    still = server.status(slow["id"])
    assert still["status"] == "working" and still["progress"] < 12
    assert still["message"] == "Throttled: at most 1 limits.one items run at once"


@pytest.mark.slow
def test_a_killed_worker_frees_its_limited_items_when_its_lease_lapses(
    db_url: str, start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(workers=0, db=db_url, JOBLOT_APP=LIMITED_APP)
    items = [{"id": i, "first_attempt_seconds": 3600} for i in range(2)]
    items += [{"id": i} for i in range(2, 6)]
    job = server.submit("limits.pair", items)
    env = {**joblot_env, "JOBLOT_APP": LIMITED_APP}
    doomed = start_worker(db_url, env, tmp_path / "doomed.log")
    try:
        _wait_until(lambda: server.status(job["id"])["status"] == "working", 30)
        time.sleep(0.5)  # it holds both slots, its two items hanging
        assert server.status(job["id"])["progress"] == 0
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
    killed_at = time.monotonic()
    rescuer = start_worker(db_url, env, tmp_path / "rescuer.log")
    try:
        status = server.wait(job["id"], timeout=60)
    finally:
        os.killpg(rescuer.pid, signal.SIGTERM)
        rescuer.wait(30)
    assert status["status"] == "completed" and status["progress"] == 6
    assert time.monotonic() - killed_at < 30
    entries = server.all_results(job["id"])
    assert all(e["success"] for e in entries) and most_at_once(entries) <= 2


def _wait_until(condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
