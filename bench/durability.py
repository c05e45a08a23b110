"""What durable acknowledgements cost on SQLite, before and after, printed as markdown tables.

Run `python bench/durability.py [--before REV] [--modes group,transaction,database]
[--items 20000] [--submit-items 100000] [--workers 2] [--repeat 3] [--acks 2000]
[--clients 16]`. For the code at `--before` (the last revision before acknowledged writes were
synced; extracted with `git archive` and run from a temporary folder) and for this checkout
with each way of syncing (JOBLOT_SQLITE_SYNC), on fresh SQLite files, side by side:

- W1: a `demo.echo` job of `--items` items on `--workers` worker processes, submit → completed;
- the POST of a `--submit-items`-item job (no workers, so nothing competes with the insert);
- acknowledged writes per second: `--clients` concurrent clients submitting 1-item jobs.

Each variant runs `--repeat` times per measurement, round-robin across variants, so that a
change in the machine's load hits them alike. Servers run in their own process groups and are
stopped with SIGTERM then SIGKILL; the temporary folder goes away whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from bulk import check_results, job_body, submit, wait_finished
from harness import BenchError, run_bench, running_server

API = "/api/v2"
DEFAULT_BEFORE = "e3a74fb"  # main right before durable acknowledgements and chunked submits
QUIET_SECONDS = 5.0  # the stall probe's reads and small jobs without a submit, to compare
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Variant:
    """A way to run `joblot serve`: which code, and which JOBLOT_SQLITE_SYNC."""

    label: str
    env: dict[str, str]


@dataclass
class Figures:
    """What was measured for one variant."""

    w1_rates: list[float] = field(default_factory=list)  # items/s
    submit_seconds: list[float] = field(default_factory=list)
    ack_rates: list[float] = field(default_factory=list)  # acknowledged submits/s
    ack_millis: list[float] = field(default_factory=list)  # each submit's round trip


def extract(revision: str, into: Path) -> Path:
    """The `src/` folder of `revision`, written under `into`; its path (for PYTHONPATH)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", revision, "src"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"cannot extract revision {revision!r} with git archive: {exc}") from exc
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def variants(args: argparse.Namespace, tmp: Path) -> list[Variant]:
    """The code before, then this checkout with each sync mode asked for."""
    found = []
    if args.before:
        source = extract(args.before, tmp / "before")
        found.append(Variant(f"before ({args.before})", {"PYTHONPATH": str(source)}))
    for mode in args.modes.split(","):
        found.append(Variant(f"after, {mode}", {"JOBLOT_SQLITE_SYNC": mode}))
    return found


@contextlib.contextmanager
def server(
    variant: Variant, tmp: Path, name: str, workers: int
) -> Iterator[tuple[str, httpx.Client]]:
    """A fresh SQLite file and a ready `joblot serve` of `variant` on it."""
    db = f"sqlite:///{tmp / name}.db"
    env = {**variant.env, "JOBLOT_MAX_ACTIVE_JOBS": "1000000", "JOBLOT_MAX_ITEMS": "1000000"}
    env["JOBLOT_RATE_LIMIT_PER_MINUTE"] = "100000000"
    env["JOBLOT_MAX_BODY_BYTES"] = "100000000"
    with running_server(db, workers, tmp / f"{name}.log", env) as (_, client):
        yield db, client


def measure_w1(client: httpx.Client, items: int) -> float:
    """One W1 run: submit → completed, in items/s."""
    body = job_body(items)
    started = time.perf_counter()
    queued = submit(client, body)
    final = wait_finished(client, queued["id"], "tight", 600.0)
    rate = items / (time.perf_counter() - started)
    check_results(client, final)
    return rate


def measure_submit(client: httpx.Client, body: bytes) -> float:
    """One POST of a big job, in seconds."""
    started = time.perf_counter()
    submit(client, body)
    return time.perf_counter() - started


async def measure_acks(url: str, total: int, clients: int) -> tuple[float, list[float]]:
    """`total` 1-item submits from `clients` concurrent clients: submits/s and each in ms."""
    body = orjson.dumps({"job": {"job_type": "demo.echo", "items": [{"id": 1}]}})
    headers = {"Content-Type": "application/json"}
    millis: list[float] = []
    remaining = [total]

    async def one_client(http: httpx.AsyncClient) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter()
            response = await http.post(f"{API}/jobs", content=body, headers=headers)
            millis.append((time.perf_counter() - started) * 1000)
            if response.status_code != 202:
                raise BenchError(f"submit answered {response.status_code}: {response.text}")

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return total / elapsed, millis


@dataclass
class Stall:
    """What small jobs and status reads went through while a big job was being submitted,
    and the same without it, just before (the machine's load changes by the minute)."""

    submit_s: float = 0.0
    probes_s: list[float] = field(default_factory=list)  # 10-item jobs, created → finished
    reads_ms: list[float] = field(default_factory=list)
    quiet_probes_s: list[float] = field(default_factory=list)
    quiet_reads_ms: list[float] = field(default_factory=list)


def job_seconds(db: str, job_id: str) -> float:
    """created_at → finished_at of a job, as the server recorded them."""
    path = db.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT finished_at - created_at FROM jobs WHERE id = ?", (job_id,))
        return float(row.fetchone()[0])


def probe(client: httpx.Client, db: str) -> float:
    """A 10-item `demo.sleep` job (10 ms an item, so it is claimed more than once): seconds
    from its creation to its completion, as the server recorded them."""
    items = [{"id": i, "seconds": 0.01} for i in range(10)]
    queued = submit(client, orjson.dumps({"job": {"job_type": "demo.sleep", "items": items}}))
    wait_finished(client, queued["id"], "tight", 120.0)
    return job_seconds(db, queued["id"])


def read_while(url: str, job_id: str, busy: threading.Event, into: list[float]) -> None:
    """Read one status in a loop on a connection of its own until `busy` is cleared."""
    with httpx.Client(base_url=url, timeout=60) as http:
        while busy.is_set():
            started = time.perf_counter()
            response = http.get(f"{API}/job_statuses/{job_id}.json")
            into.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise BenchError(f"status read answered {response.status_code}")
            time.sleep(0.002)


def measure_stall(variant: Variant, tmp: Path, name: str, items: int) -> Stall:
    """Submit an `items`-item job; while its POST runs, probe with 10-item jobs and read a
    status over and over (on the server with 2 workers)."""
    got = Stall()
    body = job_body(items)
    with (
        server(variant, tmp, name, 2) as (db, client),
        httpx.Client(base_url=client.base_url, timeout=600) as poster,
        ThreadPoolExecutor(2) as threads,
    ):
        probe(client, db)  # the workers are up
        watched = submit(client, job_body(1))["id"]
        reading = threading.Event()
        reading.set()
        reads = got.quiet_reads_ms
        reader = threads.submit(read_while, str(client.base_url), watched, reading, reads)
        until = time.perf_counter() + QUIET_SECONDS
        while time.perf_counter() < until:
            got.quiet_probes_s.append(probe(client, db))
        reading.clear()
        reader.result()
        reading.set()
        reader = threads.submit(read_while, str(client.base_url), watched, reading, got.reads_ms)
        started = time.perf_counter()
        posted = threads.submit(submit, poster, body)
        while not posted.done():
            got.probes_s.append(probe(client, db))
        got.submit_s = time.perf_counter() - started
        reading.clear()
        posted.result()
        reader.result()
    return got


def measure_rounds(args: argparse.Namespace, tmp: Path, found: list[Variant]) -> dict[str, Figures]:
    """Every measurement of every variant, `--repeat` rounds, variants in turn each round."""
    figures = {v.label: Figures() for v in found}
    big = job_body(args.submit_items)
    for round_ in range(1, args.repeat + 1):
        for n, variant in enumerate(found):
            print(f"round {round_}: {variant.label}...", file=sys.stderr)
            got = figures[variant.label]
            with server(variant, tmp, f"w1-{round_}-{n}", args.workers) as (_, client):
                measure_w1(client, 100)  # warm-up
                got.w1_rates.append(measure_w1(client, args.items))
            with server(variant, tmp, f"submit-{round_}-{n}", 0) as (_, client):
                got.submit_seconds.append(measure_submit(client, big))
                rate, millis = asyncio.run(
                    measure_acks(str(client.base_url), args.acks, args.clients)
                )
                got.ack_rates.append(rate)
                got.ack_millis.extend(millis)
    return figures


def stall_table(stalls: dict[str, Stall], items: int) -> list[str]:
    """One row per variant: the submit, the probes beside it, the status reads beside it."""
    lines = [
        f"### Beside a {items:,}-item submit (SQLite, 2 workers)",
        "",
        "While the POST runs: 10-item `demo.sleep` jobs (10 ms an item) one after another, "
        "each timed created → finished as the server recorded it; and a status read in a "
        f"loop on its own connection. The *quiet* rows: the same for {QUIET_SECONDS:.0f} s "
        "just before the POST, on the same server (the machine's load shifts by the minute).",
        "",
        "| variant | submit (s) | 10-item jobs | median (s) | worst (s) "
        "| reads | read p50 ms | read p99 ms | read max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, got in stalls.items():
        lines.append(_stall_row(label, f"{got.submit_s:.1f}", got.probes_s, got.reads_ms))
        lines.append(_stall_row(f"{label}, quiet", "-", got.quiet_probes_s, got.quiet_reads_ms))
    return lines


def _stall_row(label: str, submit_s: str, probes_s: list[float], reads_ms: list[float]) -> str:
    probes = probes_s or [float("nan")]
    return (
        f"| {label} | {submit_s} | {len(probes_s)} | {statistics.median(probes):.2f} | "
        f"{max(probes):.2f} | {len(reads_ms)} | {statistics.median(reads_ms):.1f} | "
        f"{quantile(reads_ms, 99):.1f} | {max(reads_ms):.1f} |"
    )


def quantile(values: list[float], q: int) -> float:
    """The q-th percentile."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def table(figures: dict[str, Figures], args: argparse.Namespace) -> list[str]:
    """One row per variant: medians of the rounds (and the best W1)."""
    lines = [
        f"### W1, a {args.submit_items:,}-item submit, and acknowledged writes, on SQLite",
        "",
        f"W1: {args.items:,} `demo.echo` items on {args.workers} workers, submit → completed "
        f"(5 ms polls). Submit: the POST of {args.submit_items:,} items with no workers. "
        f"Acks: {args.acks:,} 1-item submits from {args.clients} concurrent clients. "
        f"Medians of {args.repeat} rounds.",
        "",
        "| variant | W1 items/s | W1 best | submit (s) | acks/s | ack p50 ms | ack p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, got in figures.items():
        lines.append(
            f"| {label} | {statistics.median(got.w1_rates):,.0f} | {max(got.w1_rates):,.0f} | "
            f"{statistics.median(got.submit_seconds):.2f} | "
            f"{statistics.median(got.ack_rates):,.0f} | "
            f"{statistics.median(got.ack_millis):.1f} | {quantile(got.ack_millis, 99):.1f} |"
        )
    return lines


def parse_args() -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--before",
        default=DEFAULT_BEFORE,
        help=f"git revision to compare with (default {DEFAULT_BEFORE}; '' to skip)",
    )
    p.add_argument("--modes", default="group,transaction,database", help="JOBLOT_SQLITE_SYNC")
    p.add_argument("--items", type=int, default=20_000, help="items in a W1 job")
    p.add_argument("--submit-items", type=int, default=100_000, help="items in the big submit")
    p.add_argument("--workers", type=int, default=2, help="worker processes for W1")
    p.add_argument("--repeat", type=int, default=3, help="rounds")
    p.add_argument("--acks", type=int, default=2000, help="1-item submits per round")
    p.add_argument("--clients", type=int, default=16, help="concurrent submitting clients")
    p.add_argument("--stall-items", type=int, default=1_000_000, help="items of the big submit")
    p.add_argument("--skip-acks", action="store_true", help="only the stall probe")
    p.add_argument("--skip-stall", action="store_true", help="no stall probe")
    return p.parse_args()


@dataclass
class Report:
    """Everything measured, for printing: None where skipped."""

    figures: dict[str, Figures] | None
    stalls: dict[str, Stall] | None


def measure(args: argparse.Namespace, tmp: Path) -> Report:
    """The rounds of W1, submits and acks, then the stall probe, as asked for."""
    found = variants(args, tmp)
    figures = None if args.skip_acks else measure_rounds(args, tmp, found)
    return Report(figures, None if args.skip_stall else stalls(args, tmp, found))


def render(report: Report, args: argparse.Namespace, header: list[str]) -> str:
    """The report as markdown."""
    lines = ["## joblot bench/durability.py", "", *header]
    if report.figures is not None:
        lines += ["", *table(report.figures, args)]
    if report.stalls is not None:
        lines += ["", *stall_table(report.stalls, args.stall_items)]
    return "\n".join(lines)


def main() -> int:
    """Run the measurements and print the report; the temp folder goes away in every case."""
    return run_bench(parse_args(), measure, render)


def stalls(args: argparse.Namespace, tmp: Path, found: list[Variant]) -> dict[str, Stall]:
    """The stall probe, before and after (the first mode asked for)."""
    chosen = found[:2] if args.before else found[:1]
    result = {}
    for n, variant in enumerate(chosen):
        print(f"stall probe: {variant.label}...", file=sys.stderr)
        result[variant.label] = measure_stall(variant, tmp, f"stall-{n}", args.stall_items)
    return result


if __name__ == "__main__":
    sys.exit(main())
