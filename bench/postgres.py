"""PostgreSQL bulk throughput by worker count, and small-job latency beside a big job.

Run `python bench/postgres.py [--pg URL] [--workers 1,2,4] [--items 20000] [--repeat 3]
[--big 200000] [--probes 5]`. Every server gets a fresh schema, dropped at the end; servers
are stopped with SIGTERM then SIGKILL, and the temporary folder goes away, whatever happens.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bulk import TIGHT_POLL_SECONDS, check_results, job_body, read_status, submit, wait_finished
from harness import (
    BenchError,
    postgres_schema,
    postgres_url,
    run_bench,
    running_server,
)
from pgmonitor import FAST_SAMPLE_SECONDS, Counters, Monitor, Samples, monitoring

# PostgreSQL 15 backends publish their counters at most once a second while busy, and an
# idle one only after 10 s (PGSTAT_IDLE_INTERVAL): wait this long before reading a total.
STATS_SETTLE_SECONDS = 10.5
BASELINE_SECONDS = 5.0  # idle commit rate (workers polling for work), subtracted per run
TARGET_RATE = 15_000  # items/s with 2 workers, from the issue
TARGET_LATENCY = 2.0  # seconds for the 10-item job beside the big one


# -- bulk throughput ------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One bulk job and the commits PostgreSQL counted meanwhile."""

    workers: int
    items: int
    submit_s: float
    completed_s: float
    server_s: float | None
    counted: Counters  # the idle background already subtracted
    polls: int  # status reads the client made while waiting (each one commit)
    foreign: frozenset[str]  # other sessions seen: their commits are in the count too

    @property
    def rate(self) -> float:
        """Items per second, end to end."""
        return self.items / self.completed_s

    @property
    def per_second(self) -> Counters:
        """Commits, WAL bytes and WAL fsyncs per second of the run."""
        return self.counted.scaled(1 / self.completed_s)


@dataclass
class WorkerCount:
    """Every run with one number of worker processes."""

    workers: int
    idle: Counters = field(default_factory=lambda: Counters(0, 0, 0))  # per s, workers idle
    runs: list[Run] = field(default_factory=list)
    samples: Samples = field(default_factory=Samples)
    autoanalyzed: int = 0  # autovacuum ANALYZEs of items meanwhile: they change the plans


def wait_counting(client: httpx.Client, job_id: str, timeout: float) -> tuple[dict[str, Any], int]:
    """Poll every TIGHT_POLL_SECONDS until the job finishes; the status and the polls made."""
    deadline, polls = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        status = read_status(client, job_id)
        polls += 1
        if status["status"] == "completed":
            return status, polls
        if status["status"] == "failed":
            raise BenchError(f"job {job_id} failed: {status['message']}")
        time.sleep(TIGHT_POLL_SECONDS)
    raise BenchError(f"job {job_id} did not finish in {timeout:.0f} s")


def settled(monitor: Monitor, settle: float) -> tuple[Counters, float]:
    """Wait until every session has published its counters; (counters, monotonic time)."""
    time.sleep(settle)
    return monitor.counters(), time.monotonic()


def bench_worker_count(
    base_url: str, workers: int, args: argparse.Namespace, tmp: Path
) -> WorkerCount:
    """A fresh schema and server with `workers` workers: a warm-up, then `--repeat` timed jobs."""
    app = f"joblot-bench-{uuid.uuid4().hex[:8]}"
    result = WorkerCount(workers)
    body = job_body(args.items)
    log = tmp / f"bulk-{workers}.log"
    with (
        postgres_schema(base_url, app) as schema,
        running_server(schema.url, workers, log) as (_, client),
        monitoring(base_url, app) as monitor,
    ):
        wait_finished(client, submit(client, job_body(100))["id"], "tight", args.timeout)
        start, start_t = settled(monitor, args.settle)
        before, before_t = settled(monitor, BASELINE_SECONDS)
        result.idle = (before - start).scaled(1 / (before_t - start_t))
        for n in range(args.repeat):
            started = time.perf_counter()
            with monitor.sampling_fast():
                queued = submit(client, body)
                submitted = time.perf_counter()
                final, polls = wait_counting(client, queued["id"], args.timeout)
                ended = time.perf_counter()
            after, after_t = settled(monitor, args.settle)
            idle = result.idle.scaled((after_t - before_t) - (ended - started))
            run = Run(
                workers,
                args.items,
                submitted - started,
                ended - started,
                monitor.server_seconds(schema.name, queued["id"]),
                after - before - idle,
                polls,
                frozenset(monitor.foreign_since(before_t - args.settle)),
            )
            check_results(client, final)
            print(
                f"  {workers} worker(s), run {n + 1}: {run.completed_s:.3f} s, "
                f"{run.rate:,.0f} items/s, {run.per_second.commits:,.0f} commits/s",
                file=sys.stderr,
            )
            result.runs.append(run)
            before, before_t = after, after_t
        result.samples = monitor.samples
        result.autoanalyzed = monitor.autoanalyzed(schema.name)
    return result


# -- small-job latency ----------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One small job submitted while the big job runs."""

    seconds: float  # submit start → seen completed
    big_progress: int  # items of the big job finished when the probe was submitted
    during: bool  # the big job was still working when the probe completed


@dataclass(frozen=True)
class Latency:
    """The big job and the probes beside it, on one database."""

    database: str
    big_items: int
    big_s: float
    probes: list[Probe]

    def during(self) -> list[float]:
        """Probe latencies that overlapped the big job entirely."""
        return [p.seconds for p in self.probes if p.during]


def run_probes(client: httpx.Client, big_id: str, args: argparse.Namespace) -> list[Probe]:
    """Submit `--small`-item jobs one after another while the big job is working."""
    small = job_body(args.small)
    probes: list[Probe] = []
    while len(probes) < args.probes:
        big = read_status(client, big_id)
        if big["status"] != "working":
            break
        started = time.perf_counter()
        queued = submit(client, small)
        wait_finished(client, queued["id"], "tight", args.timeout)
        seconds = time.perf_counter() - started
        during = read_status(client, big_id)["status"] == "working"
        probes.append(Probe(seconds, big["progress"] or 0, during))
        print(f"  probe {len(probes)}: {seconds:.3f} s", file=sys.stderr)
        time.sleep(args.gap)
    return probes


def bench_latency(client: httpx.Client, database: str, args: argparse.Namespace) -> Latency:
    """Submit the big job, probe while it works, then wait for it to complete."""
    print(f"  {database}: submitting {args.big:,} items...", file=sys.stderr)
    started = time.perf_counter()
    big_id = submit(client, job_body(args.big))["id"]
    deadline = time.monotonic() + args.timeout
    while read_status(client, big_id)["status"] == "queued":
        if time.monotonic() > deadline:
            raise BenchError("the big job never started")
        time.sleep(TIGHT_POLL_SECONDS)
    probes = run_probes(client, big_id, args)
    wait_finished(client, big_id, "tight", args.timeout)
    return Latency(database, args.big, time.perf_counter() - started, probes)


@contextlib.contextmanager
def latency_database(database: str, base_url: str, tmp: Path) -> Iterator[str]:
    """A fresh database of the kind asked for: a schema, or a SQLite file."""
    if database == "sqlite":
        yield f"sqlite:///{tmp / 'latency.db'}"
        return
    with postgres_schema(base_url, f"joblot-bench-{uuid.uuid4().hex[:8]}") as schema:
        yield schema.url


def measure_latency(database: str, base_url: str, args: argparse.Namespace, tmp: Path) -> Latency:
    """On a fresh server: the big job, and the probes beside it."""
    env = {"JOBLOT_MAX_ITEMS": str(args.big), "JOBLOT_MAX_BODY_BYTES": str(200 * 1024 * 1024)}
    log = tmp / f"latency-{database}.log"
    with (
        latency_database(database, base_url, tmp) as url,
        running_server(url, args.latency_workers, log, env) as (_, client),
    ):
        return bench_latency(client, database, args)


# -- report ---------------------------------------------------------------------------------


def run_row(label: str, run: Run) -> str:
    """One row of the per-run table."""
    server = "-" if run.server_s is None else f"{run.server_s:.3f}"
    flag = " *" if run.foreign else ""
    rate = run.per_second
    return (
        f"| {run.workers} | {label} | {run.submit_s:.3f} | {run.completed_s:.3f} | {server} | "
        f"{run.rate:,.0f} | {run.counted.commits:,.0f}{flag} | {rate.commits:,.0f}{flag} | "
        f"{rate.wal_syncs:,.0f}{flag} | {run.counted.wal_bytes / 2**20:,.1f}{flag} | "
        f"{run.polls} |"
    )


def bulk_tables(counts: list[WorkerCount], items: int) -> list[str]:
    """Every run, then best and median per worker count against the target."""
    lines = [
        f"### PostgreSQL bulk workload (one demo.echo job of {items:,} items, "
        "`joblot serve --workers N`)",
        "",
        "| workers | run | submit (s) | submit→completed (s) | server created→finished (s) "
        "| items/s | commits | commits/s | WAL fsyncs/s | WAL MiB | status polls |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count in counts:
        lines += [run_row(str(n), run) for n, run in enumerate(count.runs, 1)]
    lines += [
        "",
        "| workers | best items/s | median items/s | median s | median commits/s "
        "| commits per 1,000 items | WAL bytes per item | idle commits/s (subtracted) "
        "| items autoanalyzed | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for count in counts:
        rates = [r.rate for r in count.runs]
        commits = statistics.median(r.counted.commits for r in count.runs)
        wal = statistics.median(r.counted.wal_bytes for r in count.runs)
        target = ""
        if count.workers == 2:
            ok = statistics.median(rates) >= TARGET_RATE
            target = f"≥ {TARGET_RATE:,}: {'met' if ok else 'MISSED'}"
        lines.append(
            f"| {count.workers} | {max(rates):,.0f} | {statistics.median(rates):,.0f} | "
            f"{statistics.median(r.completed_s for r in count.runs):.3f} | "
            f"{statistics.median(r.per_second.commits for r in count.runs):,.0f} | "
            f"{commits * 1000 / items:,.1f} | {wal / items:,.0f} | {count.idle.commits:,.0f} | "
            f"{count.autoanalyzed} | {target} |"
        )
    foreign = set().union(*(r.foreign for c in counts for r in c.runs))
    lines += [
        "",
        "Commits are the delta of `xact_commit` in `pg_stat_database` over the run, read after "
        f"{STATS_SETTLE_SECONDS:g} s (PostgreSQL publishes idle sessions' counters that late), "
        "minus the idle rate of the workers polling for work over that wait. They include one "
        "read-only commit per status poll and per autocommit read (and per connection check "
        "of the pool); only writing commits wait for a WAL fsync. WAL counters are the whole "
        'server\'s. "items autoanalyzed": autovacuum ANALYZEs of the items table during '
        "the runs (plans change after one).",
    ]
    if foreign:
        lines.append(
            f"\n\\* other sessions used the database meanwhile ({', '.join(sorted(foreign))}); "
            "their commits and WAL are in these counts."
        )
    return lines


def share_rows(
    counts: list[WorkerCount], pick: Callable[[Samples], collections.Counter[str]], top: int
) -> list[str]:
    """The `top` keys over all worker counts, each as a share of its count's busy samples."""
    total: collections.Counter[str] = collections.Counter()
    for count in counts:
        total.update(pick(count.samples))
    lines = []
    for name, _ in total.most_common(top):
        cells = []
        for c in counts:
            busy = sum(c.samples.busy.values())
            cells.append(f"{100 * pick(c.samples)[name] / busy:.0f}%" if busy else "-")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def wait_tables(counts: list[WorkerCount]) -> list[str]:
    """Where this benchmark's PostgreSQL sessions spent their time while jobs ran."""
    header = " | ".join(f"{c.workers} worker(s)" for c in counts)
    averages = [
        f"{sum(c.samples.busy.values()) / c.samples.ticks:.2f}" if c.samples.ticks else "-"
        for c in counts
    ]
    return [
        f"### Where PostgreSQL sessions were while jobs ran (pg_stat_activity every "
        f"{FAST_SAMPLE_SECONDS * 1000:.0f} ms; share of non-idle session samples)",
        "",
        f"| state / wait event | {header} |",
        "|---|" + "---:|" * len(counts),
        *share_rows(counts, lambda s: s.busy, 8),
        f"| *busy sessions per sample (average)* | {' | '.join(averages)} |",
        "",
        f"| statement (joblot query name) — state / wait event | {header} |",
        "|---|" + "---:|" * len(counts),
        *share_rows(counts, lambda s: s.statements, 12),
    ]


def latency_tables(latencies: list[Latency], small: int) -> list[str]:
    """Each probe, then median and max per database against the target."""
    lines = [
        f"### Small-job latency beside a big job ({small}-item demo.echo job, submit → "
        "completed, while the big job works)",
        "",
        "| database | probe | submit→completed (s) | big job progress at submit | "
        "big job still working after |",
        "|---|---:|---:|---:|---|",
    ]
    for lat in latencies:
        for n, p in enumerate(lat.probes, 1):
            lines.append(
                f"| {lat.database} | {n} | {p.seconds:.3f} | {p.big_progress:,} / "
                f"{lat.big_items:,} | {'yes' if p.during else 'no'} |"
            )
    lines += [
        "",
        "| database | big job items | big job submit→completed (s) | big job items/s "
        "| probes during | median (s) | max (s) | target < 2 s |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lat in latencies:
        during = lat.during()
        median = f"{statistics.median(during):.3f}" if during else "-"
        worst = f"{max(during):.3f}" if during else "-"
        verdict = "-" if not during else "met" if max(during) < TARGET_LATENCY else "MISSED"
        lines.append(
            f"| {lat.database} | {lat.big_items:,} | {lat.big_s:.1f} | "
            f"{lat.big_items / lat.big_s:,.0f} | {len(during)} of {len(lat.probes)} | "
            f"{median} | {worst} | {verdict} |"
        )
    return lines


# -- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pg", default=postgres_url(), help="PostgreSQL URL (a schema is made in it)")
    p.add_argument("--workers", default="1,2,4", help="worker counts for the bulk workload")
    p.add_argument("--items", type=int, default=20_000, help="items in each bulk job")
    p.add_argument("--repeat", type=int, default=3, help="bulk jobs timed per worker count")
    p.add_argument("--settle", type=float, default=STATS_SETTLE_SECONDS, help=argparse.SUPPRESS)
    p.add_argument("--big", type=int, default=200_000, help="items in the big latency job")
    p.add_argument("--small", type=int, default=10, help="items in each latency probe")
    p.add_argument("--probes", type=int, default=5, help="small jobs during the big one")
    p.add_argument("--gap", type=float, default=0.5, help="seconds between probes")
    p.add_argument(
        "--latency-workers", type=int, default=2, help="worker processes for the latency part"
    )
    p.add_argument(
        "--latency-on",
        default="postgres,sqlite",
        help="databases for the latency part (postgres, sqlite or both)",
    )
    p.add_argument("--skip-bulk", action="store_true", help="only the latency part")
    p.add_argument("--skip-latency", action="store_true", help="only the bulk part")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one job may take")
    args = p.parse_args()
    args.worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    args.latency_databases = [d.strip() for d in args.latency_on.split(",") if d.strip()]
    return args


@dataclass
class Report:
    """Everything measured, for printing."""

    counts: list[WorkerCount] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)


def measure(args: argparse.Namespace, tmp: Path) -> Report:
    """The bulk workload per worker count, then the latency probes per database."""
    report = Report()
    if not args.skip_bulk:
        for workers in args.worker_counts:
            print(f"bulk workload, {workers} worker(s)...", file=sys.stderr)
            report.counts.append(bench_worker_count(args.pg, workers, args, tmp))
    if not args.skip_latency:
        for database in args.latency_databases:
            print(f"small-job latency on {database}...", file=sys.stderr)
            report.latencies.append(measure_latency(database, args.pg, args, tmp))
    return report


def render(report: Report, args: argparse.Namespace, header: list[str]) -> str:
    """The whole report as markdown."""
    lines = ["## joblot bench/postgres.py", "", *header]
    if report.counts:
        lines += ["", *bulk_tables(report.counts, args.items), "", *wait_tables(report.counts)]
    if report.latencies:
        lines += ["", *latency_tables(report.latencies, args.small)]
    return "\n".join(lines)


def main() -> int:
    """Run the measurements and print the report; schemas and temp files go away in every case."""
    args = parse_args()
    return run_bench(
        args, measure, render, postgres=args.pg, stopped="servers stopped, schemas dropped"
    )


if __name__ == "__main__":
    sys.exit(main())
