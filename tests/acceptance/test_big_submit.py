"""A million-item submit on SQLite: other jobs and status reads keep going; a crash leaves
nothing a worker or reader can see, and the leader deletes what it stored."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from joblot.store.sqlite import SQLiteStore
from joblot.store.sqlite.clients import LOAD_SECONDS

from .conftest import Server

BIG_ENV = {
    "JOBLOT_MAX_ITEMS": "1000000",
    "JOBLOT_MAX_BODY_BYTES": "100000000",
    "JOBLOT_MAX_ACTIVE_JOBS": "1000",
}
SMALL_JOB_SECONDS = 1.0  # the limit for a 10-item job beside the submit
READ_P99_MILLIS = 50.0  # and for status reads
QUIET_SECONDS = 5.0  # reads and small jobs measured without a big submit, to compare


def big_body(items: int) -> bytes:
    """A `demo.echo` submission of `items` items, encoded once."""
    return orjson.dumps(
        {"job": {"job_type": "demo.echo", "items": [{"id": i} for i in range(items)]}}
    )


def count(db: str, table: str) -> int:
    """Rows of `table` in the server's SQLite file, read beside it."""
    path = db.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@contextlib.contextmanager
def submitting(server: Server, body: bytes) -> Iterator[Future[httpx.Response]]:
    """POST `body` on a thread of its own; yields once its items are being stored."""
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=server.url, timeout=300) as http:
        headers = {"Content-Type": "application/json"}
        posted = pool.submit(http.post, "/api/v2/jobs", content=body, headers=headers)
        deadline = time.monotonic() + 120
        while count(server.db, "loading_jobs") == 0:
            assert not posted.done(), f"the submit ended before loading: {posted.result().text}"
            assert time.monotonic() < deadline, "the submit never started storing items"
            time.sleep(0.005)
        yield posted


def probe(server: Server) -> float:
    """Submit a 10-item job whose items take a moment each (so it is claimed more than once);
    the seconds from its creation to its completion, as the server recorded them."""
    job = server.submit("demo.sleep", [{"id": i, "seconds": 0.01} for i in range(10)])
    final = server.wait(job["id"], timeout=30)
    assert final["status"] == "completed" and final["progress"] == 10
    path = server.db.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        query = "SELECT finished_at - created_at FROM jobs WHERE id = ?"
        return float(conn.execute(query, (job["id"],)).fetchone()[0])


class Reader(threading.Thread):
    """Reads one status over and over on its own connection, timing each read; `window`
    names the list the timings go to."""

    def __init__(self, url: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.job_id = url, job_id
        self.millis: dict[str, list[float]] = {"before": [], "during": []}
        self.window = "before"
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                window = self.window
                started = time.perf_counter()
                response = http.get(f"/api/v2/job_statuses/{self.job_id}.json")
                self.millis[window].append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
                time.sleep(0.002)

    def p99(self, window: str) -> float:
        """The 99th percentile of a window's reads, in ms."""
        return statistics.quantiles(self.millis[window], n=100, method="inclusive")[98]


@pytest.mark.slow
def test_a_million_item_submit_stalls_neither_a_small_job_nor_status_reads(
    start_server: Any,
) -> None:
    server = start_server(workers=2, **BIG_ENV)
    probe(server)  # the workers are up and claiming
    reader = Reader(server.url, server.submit("demo.echo", [{"id": 1}])["id"])
    reader.start()
    quiet, until = [], time.monotonic() + QUIET_SECONDS  # the same, with no submit going on
    while time.monotonic() < until:
        quiet.append(probe(server))
    reader.window = "during"
    probes: list[float] = []
    with submitting(server, big_body(1_000_000)) as posted:
        reader.millis["during"].clear()  # from the moment items are being stored
        while not posted.done():
            probes.append(probe(server))
        reader.stop.set()
    reader.join()
    response = posted.result()
    assert response.status_code == 202, response.text
    p99, quiet_p99 = reader.p99("during"), reader.p99("before")
    print(
        f"\n10-item jobs done in {', '.join(f'{p:.2f}' for p in probes)} s during the submit "
        f"({max(quiet):.2f} s at most without); status reads p99 {p99:.1f} ms during "
        f"({len(reader.millis['during'])} reads), {quiet_p99:.1f} ms without"
    )
    assert len(probes) >= 2, "the submit was too quick to probe twice"
    assert max(probes) < SMALL_JOB_SECONDS, probes
    # On a machine busy with other work every read is slower, submit or not (the figure on a
    # quiet machine is bench/durability.py's): then the submit must not make them more than
    # twice as slow as they are beside the same small jobs without it.
    assert p99 < max(READ_P99_MILLIS, 2 * quiet_p99), f"reads p99 {p99:.1f} ms"
    job = response.json()["job_status"]
    assert job["total"] == 1_000_000 and job["status"] == "queued"
    assert count(server.db, "loading_jobs") == 0


def test_a_submit_killed_midway_leaves_nothing_visible_and_the_leader_deletes_it(
    start_server: Any,
) -> None:
    server = start_server(workers=0, **BIG_ENV)
    with submitting(server, big_body(300_000)):
        while count(server.db, "items") == 0:  # some of the items are stored
            time.sleep(0.005)
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    stored = count(server.db, "items")
    assert stored > 0 and count(server.db, "loading_jobs") == 1
    again = start_server(workers=1, db=server.db, **BIG_ENV)
    listed = again.http.get("/api/v2/job_statuses.json").json()["job_statuses"]
    assert listed == [], "a half-stored job is visible"
    time.sleep(0.5)  # a worker polls for work: it must find none
    assert count(again.db, "items") == stored  # nothing was claimed, nothing finished
    asyncio.run(purge_as_the_leader_would(server.db, time.time() + LOAD_SECONDS))
    assert count(server.db, "items") == count(server.db, "loading_jobs") == 0


async def purge_as_the_leader_would(db: str, now: float) -> None:
    """The maintenance leader's purge, at `now`."""
    store = SQLiteStore(db.removeprefix("sqlite:///"))
    try:
        await store.purge_expired(now)
    finally:
        await store.close()
