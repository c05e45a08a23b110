"""What waiting costs: thousands of idle long polls and event streams on one API process.

Run `python bench/waiters.py [--db sqlite,postgres] [--polls 1000,5000] [--streams 1000]
[--idle 10]`. For each backend it starts `joblot serve --workers 0` on a fresh database and,
for each load, submits one `demo.echo` job, opens the waiters on it over their own
connections (long polls with `Prefer: wait=60` and the ETags of its queued and working
versions, so that only its completion answers them; or tenant / per-job event streams), lets
them sit for `--idle` seconds while it reads the API process's CPU time and memory, then
starts a separate `joblot worker` process, which completes the job, and times how long after
the job's `finished_at` each waiter heard of it. Every process it started is stopped and its
temp folder removed, whatever happens. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bulk import job_body, submit
from harness import (
    BenchError,
    Server,
    database,
    joblot_command,
    run_bench,
    running_server,
    stop_group,
)
from poll import cpu_seconds

API = "/api/v2"
# After the last waiter connected, the idle window starts once the server has taken them all
# in: once a second of its CPU time stays under SETTLED_PERCENT (or after SETTLE_SECONDS).
SETTLED_PERCENT = 10.0
SETTLE_SECONDS = 30.0
CONNECT_BATCH = 250  # connections opened at once (the server's accept backlog is finite)
ENV = {
    "JOBLOT_MAX_STREAMS_PER_TOKEN": "100000",
    "JOBLOT_RATE_LIMIT_PER_MINUTE": "100000000",
}


@dataclass(frozen=True)
class Row:
    """One load on one backend."""

    backend: str
    load: str
    waiters: int
    cpu_percent: float  # of one core, API process, over the idle window
    kib_per_waiter: float  # resident memory added per waiter
    wake_p50: float  # seconds from the job's finished_at to the waiter hearing of it
    wake_max: float


Waiter = Callable[[], Awaitable[float]]  # resolves to when (time.time()) it heard


async def open_connection(port: int, request: bytes) -> tuple[asyncio.StreamReader, Any]:
    """A connection with `request` sent on it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return reader, writer


async def heard(reader: asyncio.StreamReader, job_id: str) -> float:
    """When the completion of `job_id` arrived on this connection (BenchError if it ended
    without it)."""
    seen = b""
    marker = b'"status":"completed"'
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            raise BenchError(
                f"a waiter's connection ended before the job completed: {seen[-300:]!r}"
            )
        seen = (seen + chunk)[-200_000:]
        if marker in seen and job_id.encode() in seen:
            return time.time()


def request(path: str, **headers: str) -> bytes:
    """An HTTP/1.1 GET of `path`."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def waiter_request(load: str, job: dict[str, Any]) -> bytes:
    """What one waiter of `load` sends."""
    if load == "long polls":
        queued = f'"{job["id"]}.1"'
        working = f'"{job["id"]}.2"'
        return request(
            f"{API}/job_statuses/{job['id']}.json",
            **{"If-None-Match": f"{queued}, {working}", "Prefer": "wait=60"},
        )
    if load == "tenant streams":
        return request(f"{API}/job_statuses/events", Accept="text/event-stream")
    return request(f"{API}/job_statuses/{job['id']}/events", Accept="text/event-stream")


async def settle(pid: int) -> None:
    """Wait until the server has stopped working on the waiters' arrival."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        cpu = cpu_seconds(pid)
        await asyncio.sleep(1.0)
        if 100 * (cpu_seconds(pid) - cpu) < SETTLED_PERCENT:
            return


def rss_kib(pid: int) -> int:
    """The resident memory of a process now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def finished_at(client: httpx.Client, job_id: str) -> float:
    """The job's finished_at (from its job_stats) as a Unix time."""
    body = client.get(f"{API}/job_statuses/{job_id}.json").json()
    stamp = body["job_stats"]["finished_at"]
    if stamp is None:
        raise BenchError(f"job {job_id} has not finished: {body}")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def start_worker(db_url: str, log: Path) -> subprocess.Popen[bytes]:
    """A `joblot worker` process of its own: the change comes from outside the API process."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [*joblot_command(), "worker", "--db", db_url],
            env={**os.environ, "JOBLOT_LOG_LEVEL": "warning"},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


@dataclass(frozen=True)
class Target:
    """The server under measure and what its loads need."""

    server: Server
    client: httpx.Client
    db_url: str
    tmp: Path
    idle: float


async def measure_load(target: Target, load: str, count: int) -> Row:
    """Open `count` waiters of `load`, measure them idle, then time their wake-up."""
    server, client = target.server, target.client
    pid = server.proc.pid
    port = int(server.url.rsplit(":", 1)[1])
    job = submit(client, job_body(1))
    before_kib = rss_kib(pid)
    connections = []
    for start in range(0, count, CONNECT_BATCH):
        batch = [
            open_connection(port, waiter_request(load, job))
            for _ in range(min(CONNECT_BATCH, count - start))
        ]
        connections += await asyncio.gather(*batch)
    waits = [asyncio.create_task(heard(reader, job["id"])) for reader, _ in connections]
    try:
        await settle(pid)
        if any(w.done() for w in waits):
            done = next(w for w in waits if w.done())
            raise BenchError(
                f"a waiter answered before any change: {done.exception() or 'completed'}"
            )
        started, cpu = time.monotonic(), cpu_seconds(pid)
        await asyncio.sleep(target.idle)
        cpu_percent = 100 * (cpu_seconds(pid) - cpu) / (time.monotonic() - started)
        kib = (rss_kib(pid) - before_kib) / count
        worker = start_worker(target.db_url, target.tmp / "worker.log")
        try:
            times = await asyncio.wait_for(asyncio.gather(*waits), 120)
        finally:
            stop_group(worker, 30)
        ended = finished_at(client, job["id"])
    finally:
        for wait in waits:
            wait.cancel()
        for _, writer in connections:
            writer.close()
        await asyncio.sleep(0.5)  # let the server see them go
    delays = sorted(t - ended for t in times)
    return Row(
        rows_backend(target.db_url),
        load,
        count,
        cpu_percent,
        kib,
        statistics.median(delays),
        delays[-1],
    )


def loads(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(kind, how many) to measure, in order."""
    polls = [("long polls", int(n)) for n in args.polls.split(",") if n]
    streams = [(kind, int(args.streams)) for kind in ("tenant streams", "job streams")]
    return [*polls, *(s for s in streams if s[1] > 0)]


def measure(args: argparse.Namespace, tmp: Path) -> list[Row]:
    """Every load on every backend asked for, each on a server of its own (so that the
    memory one adds is not hidden by what an earlier one left in the heap)."""
    rows = []
    for db in args.db.split(","):
        with database(db, tmp, f"waiters-{db}") as url:
            with serving(url, tmp, db) as (server, _):
                idle = cpu_seconds(server.proc.pid)
                time.sleep(args.idle)
                nobody = 100 * (cpu_seconds(server.proc.pid) - idle) / args.idle
                rows.append(Row(rows_backend(url), "nobody waiting", 0, nobody, 0.0, 0.0, 0.0))
            for load, count in loads(args):
                with serving(url, tmp, db) as (server, client):
                    try:
                        target = Target(server, client, url, tmp, args.idle)
                        rows.append(asyncio.run(measure_load(target, load, count)))
                    except BenchError as exc:
                        raise BenchError(f"{exc}\n{server.log_tail()}") from None
    return rows


@contextlib.contextmanager
def serving(url: str, tmp: Path, db: str) -> Iterator[tuple[Server, httpx.Client]]:
    """A fresh `joblot serve --workers 0` on `url`."""
    with running_server(url, 0, tmp / f"serve-{db}.log", ENV) as running:
        yield running


def rows_backend(url: str) -> str:
    """The backend's name for the table."""
    return "PostgreSQL" if url.startswith("postgres") else "SQLite"


def table(rows: list[Row]) -> list[str]:
    """The markdown table."""
    lines = [
        "| backend | waiters | API CPU, idle (% of a core) | memory per waiter "
        "| all woken after the change (p50 / max) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        what = r.load if not r.waiters else f"{r.waiters:,} {r.load}"
        if not r.waiters:
            lines.append(f"| {r.backend} | {what} | {r.cpu_percent:.1f} | | |")
            continue
        lines.append(
            f"| {r.backend} | {what} | {r.cpu_percent:.1f} | {r.kib_per_waiter:.1f} KiB "
            f"| {r.wake_p50 * 1000:.0f} ms / {r.wake_max * 1000:.0f} ms |"
        )
    return lines


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db", default="sqlite,postgres", help="sqlite, postgres or URLs, comma-separated"
    )
    parser.add_argument("--polls", default="1000,5000", help="counts of idle long polls to measure")
    parser.add_argument(
        "--streams", type=int, default=1000, help="event streams of each kind (0: none)"
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle window")
    return parser.parse_args()


def raise_fd_limit(wanted: int) -> None:
    """Room for every connection, here and in the server (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def render(rows: list[Row], args: argparse.Namespace, header: list[str]) -> str:
    """The report as markdown."""
    run = (
        f"`joblot serve --workers 0`, waiters on one `demo.echo` job each over their own "
        f"connections, idle for {args.idle:g} s, then completed by a separate `joblot worker`"
    )
    lines = ["## joblot bench/waiters.py", "", *header, f"- load: {run}", "", *table(rows)]
    return "\n".join(lines)


def main() -> int:
    """Run the measurements and print the report; the temp folder goes away in every case."""
    args = parse_args()
    most = max([n for _, n in loads(args)] or [0])
    raise_fd_limit(2 * most + 1024)
    return run_bench(args, measure, render)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
