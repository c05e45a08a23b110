"""Exactly once under repeated crashes: workers SIGKILLed at five random moments of a
100,000-item job, one restarted each time, on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from integration.conftest import fresh_schema

from .conftest import Server, run_cli
from .pgcluster import WorkerProcess

ITEMS = 100_000
KILLS = 5
SECONDS = 0.0005  # per item: with 2 workers of 4 slots the job runs for some 7 s or more


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each backend (a PostgreSQL one in a schema of its own)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/joblot.db"
        return
    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


def recorded(db: str, job_id: str) -> tuple[int, int, int, int, int]:
    """Results of the job: how many, distinct indexes, lowest, highest, successes."""
    query = (
        "SELECT count(*), count(DISTINCT idx), min(idx), max(idx), sum(CASE WHEN success "
        "THEN 1 ELSE 0 END) FROM results WHERE job_id = {}"
    )
    if db.startswith("sqlite:///"):
        path = db.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            row = conn.execute(query.format("?"), (job_id,)).fetchone()
    else:
        with psycopg.connect(db) as pg:
            row = pg.execute(query.format("%s"), (job_id,)).fetchone()
    assert row is not None
    return tuple(int(v) for v in row)  # type: ignore[return-value]


@pytest.mark.slow
def test_every_item_is_recorded_once_through_five_worker_kills(
    database: str, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**joblot_env, "JOBLOT_MAX_ATTEMPTS": "100"}  # no item runs out of attempts here
    assert run_cli("migrate", "--db", database, env=env).returncode == 0
    api = Server(database, 0, env, tmp_path / "api.log")
    workers: list[WorkerProcess] = []
    try:
        workers += [WorkerProcess(database, env, tmp_path / f"worker{n}.log") for n in range(2)]
        for worker in workers:
            worker.wait_started()
        items = [{"id": i, "seconds": SECONDS} for i in range(ITEMS)]
        job = api.submit("demo.sleep", items)
        moments = sorted(random.sample(range(5, 85), KILLS))  # percent done at each kill
        for n, percent in enumerate(moments):
            _wait_for_progress(api, job["id"], ITEMS * percent // 100)
            victim = workers.pop(0)  # the longest running: it holds leased items
            victim.kill()
            victim.stop()  # closes its log
            workers.append(WorkerProcess(database, env, tmp_path / f"worker{n + 2}.log"))
        final = api.wait(job["id"], timeout=300)
        assert final["status"] == "completed", final
        assert final["progress"] == final["total"] == ITEMS
        assert recorded(database, job["id"]) == (ITEMS, ITEMS, 0, ITEMS - 1, ITEMS)
        logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
        assert "of lapsed leases to the queue" in logs  # the killed workers' items came back
    finally:
        for worker in workers:
            worker.stop()
        api.stop()


def _wait_for_progress(api: Any, job_id: str, done: int) -> None:
    deadline = time.monotonic() + 300
    while (status := api.status(job_id))["progress"] is None or status["progress"] < done:
        assert status["status"] in ("queued", "working"), f"the job ended early: {status}"
        assert time.monotonic() < deadline, f"stuck at {status['progress']} of {done}"
        time.sleep(0.05)
