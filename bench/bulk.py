"""Bulk throughput and status-read cost of a real `joblot serve`, printed as markdown tables.

Run `python bench/bulk.py [--items 20000] [--workers 2] [--db sqlite|postgres|URL]
[--big 1000000] [--repeat 3]`. It starts its own servers (in their own process groups), stops
them with SIGTERM then SIGKILL, and deletes its temporary folder and the PostgreSQL schemas it
made, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from harness import (
    BenchError,
    database,
    postgres_named,
    run_bench,
    running_server,
)

API = "/api/v2"
TIGHT_POLL_SECONDS = 0.005
LONG_POLL_WAIT = 5  # seconds, sent as `Prefer: wait=5`
STATUS_READS = 2000
STATUS_WARMUP = 50


# -- jobs over HTTP -------------------------------------------------------------------------


def job_body(items: int) -> bytes:
    """A `demo.echo` submission of `items` items `{"id": i}`, encoded ahead of timing."""
    return orjson.dumps(
        {"job": {"job_type": "demo.echo", "items": [{"id": i} for i in range(items)]}}
    )


def submit(client: httpx.Client, body: bytes) -> dict[str, Any]:
    """POST /api/v2/jobs; the queued JobStatus (202 expected)."""
    response = client.post(
        f"{API}/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    if response.status_code != 202:
        raise BenchError(f"submit answered {response.status_code}: {response.text[:300]}")
    status: dict[str, Any] = response.json()["job_status"]
    return status


def read_status(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """GET one JobStatus."""
    response = client.get(f"{API}/job_statuses/{job_id}.json")
    if response.status_code != 200:
        raise BenchError(f"status read answered {response.status_code}: {response.text[:300]}")
    status: dict[str, Any] = response.json()["job_status"]
    return status


def wait_tight(client: httpx.Client, job_id: str, deadline: float) -> dict[str, Any]:
    """Poll every TIGHT_POLL_SECONDS until the job finishes."""
    while time.monotonic() < deadline:
        status = read_status(client, job_id)
        if status["status"] in ("completed", "failed"):
            return status
        time.sleep(TIGHT_POLL_SECONDS)
    raise BenchError(f"job {job_id} did not finish in time")


def wait_long(client: httpx.Client, job_id: str, deadline: float) -> dict[str, Any]:
    """Long-poll (`If-None-Match` + `Prefer: wait=N`) until the job finishes."""
    tag = ""
    while time.monotonic() < deadline:
        headers = {"If-None-Match": tag, "Prefer": f"wait={LONG_POLL_WAIT}"} if tag else {}
        response = client.get(f"{API}/job_statuses/{job_id}.json", headers=headers)
        if response.status_code == 304:
            continue
        if response.status_code != 200:
            raise BenchError(f"long poll answered {response.status_code}")
        tag = response.headers.get("etag", "")
        status: dict[str, Any] = response.json()["job_status"]
        if status["status"] in ("completed", "failed"):
            return status
    raise BenchError(f"job {job_id} did not finish in time")


def wait_finished(client: httpx.Client, job_id: str, poll: str, timeout: float) -> dict[str, Any]:
    """The finished JobStatus; BenchError if it failed or took longer than `timeout`."""
    deadline = time.monotonic() + timeout
    wait = wait_tight if poll == "tight" else wait_long
    status = wait(client, job_id, deadline)
    if status["status"] != "completed":
        raise BenchError(f"job {job_id} ended {status['status']}: {status['message']}")
    return status


def check_results(client: httpx.Client, status: dict[str, Any]) -> None:
    """progress == total, and the first page of /results holds the right entries."""
    if status["progress"] != status["total"]:
        raise BenchError(f"progress {status['progress']} != total {status['total']}")
    response = client.get(
        f"{API}/job_statuses/{status['id']}/results.json", params={"page[size]": 100}
    )
    entries = response.json()["results"] if response.status_code == 200 else []
    expected = min(100, status["total"])
    good = [
        e
        for n, e in enumerate(entries)
        if e.get("index") == n and e.get("id") == n and e.get("success") is True
    ]
    if len(good) != expected:
        raise BenchError(f"results spot check: {len(good)} of {expected} entries as expected")


# -- measurements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One bulk job: how long the POST took, and submit start until seen completed."""

    job_id: str
    items: int
    submit_s: float
    completed_s: float
    server_s: float | None  # created_at → finished_at as the server recorded them

    @property
    def rate(self) -> float:
        """Items per second, end to end."""
        return self.items / self.completed_s


def server_side_seconds(db_url: str, job_id: str) -> float | None:
    """created_at → finished_at as the server recorded them, read from the database."""
    query = "SELECT finished_at - created_at FROM jobs WHERE id = {}"
    if db_url.startswith("sqlite:///"):
        path = db_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            row = conn.execute(query.format("?"), (job_id,)).fetchone()
    else:  # the URL's search_path, if any, selects the schema
        with psycopg.connect(db_url, autocommit=True, connect_timeout=10) as pg:
            row = pg.execute(query.format("%s"), (job_id,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def run_job(client: httpx.Client, items: int, poll: str, timeout: float, db_url: str) -> Run:
    """Submit one job of `items` items and wait until it is completed; verify it."""
    body = job_body(items)
    started = time.perf_counter()
    queued = submit(client, body)
    submitted = time.perf_counter()
    final = wait_finished(client, queued["id"], poll, timeout)
    ended = time.perf_counter()
    check_results(client, final)
    return Run(
        queued["id"],
        items,
        submitted - started,
        ended - started,
        server_side_seconds(db_url, queued["id"]),
    )


def bench_bulk(client: httpx.Client, args: argparse.Namespace, db_url: str) -> list[Run]:
    """A warm-up job, then `--repeat` jobs of `--items` items."""
    run_job(client, 100, args.poll, args.timeout, db_url)
    runs = []
    for n in range(args.repeat):
        run = run_job(client, args.items, args.poll, args.timeout, db_url)
        print(f"  run {n + 1}: {run.completed_s:.3f} s, {run.rate:,.0f} items/s", file=sys.stderr)
        runs.append(run)
    return runs


@dataclass(frozen=True)
class Reads:
    """Latencies of sequential status reads of one job."""

    total: int
    millis: list[float]

    def quantile(self, q: int) -> float:
        """The q-th percentile in ms."""
        return statistics.quantiles(self.millis, n=100, method="inclusive")[q - 1]


def time_reads(client: httpx.Client, job_id: str, count: int) -> list[float]:
    """`count` sequential GETs of one status over a keep-alive client, in ms each."""
    path = f"{API}/job_statuses/{job_id}.json"
    for _ in range(STATUS_WARMUP):
        client.get(path)
    millis = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        response.read()
        millis.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise BenchError(f"status read answered {response.status_code}")
    return millis


def affordable_big(wanted: int, rate: float, budget: float) -> int:
    """The big job's size: as asked, unless at `rate` it would take more than `budget` s."""
    if rate * budget >= wanted:
        return wanted
    return max(10_000, int(rate * budget) // 10_000 * 10_000)


def bench_status_reads(
    client: httpx.Client, args: argparse.Namespace, db_url: str, big: int
) -> tuple[list[Reads], Run]:
    """Finish a 20-item and a `big`-item job, then time status reads of each."""
    small = run_job(client, 20, "tight", args.timeout, db_url)
    print(f"  big job: {big:,} items...", file=sys.stderr)
    big_run = run_job(client, big, args.poll, max(args.timeout, big / 1000), db_url)
    print(
        f"  big job: submit {big_run.submit_s:.1f} s, completed after {big_run.completed_s:.1f} s",
        file=sys.stderr,
    )
    reads = [
        Reads(20, time_reads(client, small.job_id, STATUS_READS)),
        Reads(big, time_reads(client, big_run.job_id, STATUS_READS)),
    ]
    return reads, big_run


# -- report ---------------------------------------------------------------------------------


def bulk_row(label: str, run: Run, workers: int) -> str:
    """One row of the bulk table."""
    server = "-" if run.server_s is None else f"{run.server_s:.3f}"
    return (
        f"| {label} | {run.items:,} | {workers} | {run.submit_s:.3f} | "
        f"{run.completed_s:.3f} | {server} | {run.rate:,.0f} |"
    )


def bulk_table(runs: list[Run], big_run: Run | None, workers: int, poll: str) -> list[str]:
    """The bulk workload table: each run, the best, the median, and the big job."""

    def median(field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs))

    servers = [r.server_s for r in runs if r.server_s is not None]
    middle = Run(
        "",
        runs[0].items,
        median("submit_s"),
        median("completed_s"),
        statistics.median(servers) if servers else None,
    )
    lines = [
        f"### Bulk workload (demo.echo; completion seen by {poll} polling)",
        "",
        "| workload | items | workers | submit (s) | submit→completed (s) "
        "| server created→finished (s) | items/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [bulk_row(f"bulk run {n}", run, workers) for n, run in enumerate(runs, 1)]
    lines.append(bulk_row("**bulk best**", min(runs, key=lambda r: r.completed_s), workers))
    lines.append(bulk_row("**bulk median**", middle, workers))
    if big_run is not None:
        lines.append(bulk_row("big job (status-read setup)", big_run, workers))
    return lines


def reads_table(reads: list[Reads], wanted_big: int) -> list[str]:
    """The status-read table with the big/small ratio."""
    small, big = reads
    lines = [
        f"### Status read ({STATUS_READS} sequential GETs each, one keep-alive client)",
        "",
        "| status read | total | median ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, r in (("small job (results inline)", small), ("big job (results null)", big)):
        lines.append(
            f"| {label} | {r.total:,} | {statistics.median(r.millis):.3f} | "
            f"{r.quantile(95):.3f} | {r.quantile(99):.3f} |"
        )
    ratio = [
        statistics.median(big.millis) / statistics.median(small.millis),
        big.quantile(95) / small.quantile(95),
        big.quantile(99) / small.quantile(99),
    ]
    lines.append(f"| **ratio big/small** | | {ratio[0]:.2f}x | {ratio[1]:.2f}x | {ratio[2]:.2f}x |")
    if big.total != wanted_big:
        lines += [
            "",
            f"Note: --big {wanted_big:,} was reduced to {big.total:,} because the "
            "measured throughput would have taken longer than --big-budget.",
        ]
    return lines


# -- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=20_000, help="items in each bulk job")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the server")
    p.add_argument(
        "--db",
        default="sqlite",
        help="'sqlite' (a temp file), 'postgres' (a fresh schema in env "
        "JOBLOT_BENCH_POSTGRES_URL or the local test database) or a database URL",
    )
    p.add_argument("--big", type=int, default=1_000_000, help="items in the big status job")
    p.add_argument(
        "--big-budget",
        type=float,
        default=300.0,
        help="seconds the big job may take at the measured rate before --big shrinks",
    )
    p.add_argument("--repeat", type=int, default=3, help="bulk jobs to time")
    p.add_argument(
        "--poll",
        choices=("tight", "long"),
        default="tight",
        help="see completion by a 5 ms poll loop or by the long poll",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one job may take")
    p.add_argument("--skip-status", action="store_true", help="only the bulk workload")
    return p.parse_args()


@dataclass
class Report:
    """Everything measured, for printing."""

    runs: list[Run]
    memory: list[tuple[str, float, float]]  # server, serve MiB, largest worker MiB
    big_run: Run | None = None
    reads: list[Reads] | None = None


def measure(args: argparse.Namespace, tmp: Path) -> Report:
    """Both measurements, each on a fresh server and database."""
    env = {"JOBLOT_MAX_ITEMS": str(max(args.big, args.items)), "JOBLOT_MAX_BODY_BYTES": "100000000"}
    print("bulk workload...", file=sys.stderr)
    with (
        database(args.db, tmp, "bulk") as db,
        running_server(db, args.workers, tmp / "bulk.log", env) as (server, client),
    ):
        report = Report(bench_bulk(client, args, db), [])
        report.memory.append(("bulk", *server.peak_rss_mib()))
    if args.skip_status:
        return report
    big = affordable_big(args.big, max(r.rate for r in report.runs), args.big_budget)
    print("status reads...", file=sys.stderr)
    with (
        database(args.db, tmp, "status") as db,
        running_server(db, args.workers, tmp / "status.log", env) as (server, client),
    ):
        report.reads, report.big_run = bench_status_reads(client, args, db, big)
        report.memory.append((f"status ({big:,}-item job)", *server.peak_rss_mib()))
    return report


def memory_table(memory: list[tuple[str, float, float]]) -> list[str]:
    """Peak resident memory of each server's processes."""
    lines = [
        "### Peak memory (VmHWM)",
        "",
        "| server | serve MiB | largest worker MiB |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {serve:,.0f} | {worker:,.0f} |" for name, serve, worker in memory]
    return lines


def render(report: Report, args: argparse.Namespace, header: list[str]) -> str:
    """The whole report as markdown."""
    lines = [
        "## joblot bench/bulk.py",
        "",
        *header,
        "",
        *bulk_table(report.runs, report.big_run, args.workers, args.poll),
    ]
    if report.reads is not None:
        lines += ["", *reads_table(report.reads, args.big)]
    lines += ["", *memory_table(report.memory)]
    return "\n".join(lines)


def main() -> int:
    """Run the measurements and print the report; the temp folder goes away in every case."""
    args = parse_args()
    return run_bench(args, measure, render, postgres=postgres_named(args.db))


if __name__ == "__main__":
    sys.exit(main())
