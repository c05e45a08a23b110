"""What a cluster-wide concurrency limit costs: claim throughput of a job type with
`concurrency=64` against the same job type without a limit, printed as markdown tables.

Run `python bench/limits.py [--items 20000] [--workers 2] [--worker-concurrency 32]
[--limit 64] [--ms 5,0] [--repeat 3] [--db sqlite|postgres]`. For each item duration in `--ms`
it starts a fresh `joblot serve --workers N` (async handlers, `--worker-concurrency` items at
once per worker, so as many handler slots in all as the limit by default) with the job types
of `limits_app.py`, and runs `--items`-item jobs of the unlimited type and of the limited one
in turn, `--repeat` times each. It stops its servers and deletes its temporary files and
PostgreSQL schemas, whatever happens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import orjson

from harness import (
    BenchError,
    database,
    postgres_named,
    run_bench,
    running_server,
)

API = "/api/v2"
TYPES = ("bench.free", "bench.limited")
BENCH = Path(__file__).resolve().parent


@dataclass
class Run:
    """One job: its type, how long its items took to claim and run, and how many ran at once."""

    job_type: str
    items: int
    seconds: float  # first claim → finished, as the server recorded them (job_stats)
    most_at_once: int

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_job(client: httpx.Client, job_type: str, items: int, ms: float, timeout: float) -> Run:
    """Submit a job, wait for it, and read when it started and finished and what ran at once."""
    body = {"job": {"job_type": job_type, "items": [{"id": i, "ms": ms} for i in range(items)]}}
    response = client.post(
        f"{API}/jobs", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    if response.status_code != 202:
        raise BenchError(f"submit answered {response.status_code}: {response.text[:300]}")
    job_id = response.json()["job_status"]["id"]
    deadline = time.monotonic() + timeout
    while True:
        read = client.get(f"{API}/job_statuses/{job_id}.json").json()
        if read["job_status"]["status"] in ("completed", "failed"):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"job {job_id} did not finish in {timeout:.0f} s")
        time.sleep(0.005)
    if read["job_status"]["status"] != "completed" or read["job_stats"]["failures"]:
        raise BenchError(f"job {job_id} ended {read['job_status']['status']}")
    stats = read["job_stats"]
    seconds = _time(stats["finished_at"]) - _time(stats["started_at"])
    return Run(job_type, items, seconds, most_at_once(client, job_id))


def most_at_once(client: httpx.Client, job_id: str) -> int:
    """The most items whose handlers overlapped, from the times they returned (an export)."""
    edges: list[tuple[float, int]] = []
    with client.stream("GET", f"{API}/job_statuses/{job_id}/results/export") as response:
        for line in response.iter_lines():
            if line:
                entry = orjson.loads(line)
                edges += [(entry["started"], 1), (entry["ended"], -1)]
    edges.sort(key=lambda edge: (edge[0], edge[1]))
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def measure(args: argparse.Namespace, tmp: Path) -> dict[float, list[Run]]:
    """For each item duration, both job types in turn on one fresh server."""
    env = {
        "JOBLOT_APP": "limits_app:app",
        "JOBLOT_CONCURRENCY": str(args.worker_concurrency),
        "JOBLOT_BENCH_LIMIT": str(args.limit),
        "PYTHONPATH": str(BENCH),
        "JOBLOT_MAX_ITEMS": str(max(args.items, 1000)),
        "JOBLOT_MAX_BODY_BYTES": "100000000",
    }
    found: dict[float, list[Run]] = {}
    for ms in args.ms:
        print(f"items of {ms:g} ms...", file=sys.stderr)
        name = f"limits-{ms:g}ms"
        with (
            database(args.db, tmp, name) as db,
            running_server(db, args.workers, tmp / f"{name}.log", env) as (_, client),
        ):
            for job_type in TYPES:  # warm up both
                run_job(client, job_type, 200, ms, args.timeout)
            found[ms] = [
                run_job(client, job_type, args.items, ms, args.timeout)
                for _ in range(args.repeat)
                for job_type in TYPES
            ]
    return found


def render(found: dict[float, list[Run]], args: argparse.Namespace, header: list[str]) -> str:
    """The report as markdown."""
    slots = args.workers * args.worker_concurrency
    lines = [
        "## joblot bench/limits.py",
        "",
        *header,
        "",
        f"### Claim throughput: `bench.limited` (`concurrency={args.limit}`) against "
        "`bench.free` (no limit)",
        "",
        f"{args.items:,}-item jobs, {args.db}, {args.workers} workers x "
        f"{args.worker_concurrency} async handler slots = {slots}; items/s from the job's "
        "first claim to its end (job_stats).",
        "",
        "| item | job type | runs (items/s) | median items/s | most at once | limited / free |",
        "|---|---|---|---:|---:|---:|",
    ]
    for ms, runs in found.items():
        medians = {}
        for job_type in TYPES:
            mine = [r for r in runs if r.job_type == job_type]
            medians[job_type] = statistics.median(r.rate for r in mine)
            lines.append(
                f"| {ms:g} ms | `{job_type}` | {', '.join(f'{r.rate:,.0f}' for r in mine)} "
                f"| {medians[job_type]:,.0f} | {max(r.most_at_once for r in mine)} "
                f"| {_ratio(medians) if job_type == 'bench.limited' else ''} |"
            )
    return "\n".join(lines)


def _ratio(medians: dict[str, float]) -> str:
    share = medians["bench.limited"] / medians["bench.free"]
    verdict = "within 20 %" if share >= 0.8 else "**more than 20 % slower**"
    return f"{share:.0%} ({verdict})"


def parse_args() -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=20_000, help="items in each job")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the server")
    p.add_argument(
        "--worker-concurrency", type=int, default=32, help="items each worker runs at once"
    )
    p.add_argument("--limit", type=int, default=64, help="the limited type's concurrency")
    p.add_argument(
        "--ms",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[5.0, 0.0],
        help="comma list of how long each item takes, in milliseconds (0: at once)",
    )
    p.add_argument("--repeat", type=int, default=3, help="jobs of each type per item duration")
    p.add_argument(
        "--db",
        default="sqlite",
        help="'sqlite' (a temp file), 'postgres' (a fresh schema in env "
        "JOBLOT_BENCH_POSTGRES_URL or the local test database) or a database URL",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one job may take")
    return p.parse_args()


def main() -> int:
    """Run the measurements and print the report; the temp folder goes away in every case."""
    args = parse_args()
    return run_bench(args, measure, render, postgres=postgres_named(args.db))


if __name__ == "__main__":
    sys.exit(main())
