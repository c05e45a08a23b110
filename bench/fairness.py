"""Fair to fast jobs: how long a job of fast items takes alone, behind a job of slow items, and
a small job behind a big one, on a real `joblot serve`, printed as a markdown table.

Run `python bench/fairness.py [--db sqlite,postgres] [--workers 1] [--fast 1000]
[--slow 400] [--big 100000] [--small 10] [--repeat 3]`. Every run gets a fresh server and
database: `--fast` `demo.echo` items alone; the same after a job of `--slow` 1-second
`demo.sleep` items has been running for 1.5 s (the slow job is cancelled afterwards); and
`--small` `demo.echo` items after a `--big`-item `demo.echo` job has been running for 0.5 s.
Each starts once a one-item `demo.sleep` job has run (so that the worker process is up).
Times are from submit to `completed` as the client sees it (polling every 10 ms). It stops its
servers and deletes its temporary files and PostgreSQL schemas, whatever happens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from harness import (
    BenchError,
    database,
    postgres_url,
    run_bench,
    running_server,
)

API = "/api/v2"
POLL_SECONDS = 0.01
CASES = ("fast alone", "fast behind slow", "small behind big")


def submit(client: httpx.Client, job_type: str, items: list[dict[str, Any]]) -> str:
    response = client.post(f"{API}/jobs", json={"job": {"job_type": job_type, "items": items}})
    if response.status_code != 202:
        raise BenchError(f"submit answered {response.status_code}: {response.text}")
    return str(response.json()["job_status"]["id"])


def status(client: httpx.Client, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"{API}/job_statuses/{job_id}.json").json()["job_status"]
    return body


def wait_for(client: httpx.Client, job_id: str, wanted: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (state := status(client, job_id)["status"]) not in wanted:
        if time.monotonic() > deadline:
            raise BenchError(f"job {job_id} still {state} after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def timed(
    client: httpx.Client, job_type: str, items: list[dict[str, Any]], timeout: float
) -> float:
    """Seconds from submit to completed."""
    started = time.perf_counter()
    job_id = submit(client, job_type, items)
    wait_for(client, job_id, {"completed", "failed"}, timeout)
    return time.perf_counter() - started


def run_case(case: str, client: httpx.Client, args: argparse.Namespace) -> float:
    # serve answers before its worker process is up: a one-item job of another type waits for
    # it, so that no case times a worker starting (nor teaches it anything about demo.echo)
    timed(client, "demo.sleep", [{"seconds": 0}], args.timeout)
    fast = [{"id": i} for i in range(args.fast)]
    if case == "fast alone":
        return timed(client, "demo.echo", fast, args.timeout)
    if case == "fast behind slow":
        slow = submit(client, "demo.sleep", [{"id": i, "seconds": 1} for i in range(args.slow)])
        wait_for(client, slow, {"working"}, 30)
        time.sleep(1.5)  # the workers are busy with slow items
        seconds = timed(client, "demo.echo", fast, args.timeout)
        if status(client, slow)["status"] != "working":
            raise BenchError("the slow job ended first: use a bigger --slow")
        client.post(f"{API}/job_statuses/{slow}/cancel")
        return seconds
    big = submit(client, "demo.echo", [{"id": i} for i in range(args.big)])
    wait_for(client, big, {"working"}, 30)
    time.sleep(0.5)
    seconds = timed(client, "demo.echo", [{"id": i} for i in range(args.small)], args.timeout)
    client.post(f"{API}/job_statuses/{big}/cancel")
    return seconds


def measure(args: argparse.Namespace, tmp: Path) -> dict[tuple[str, str], list[float]]:
    env = {
        "JOBLOT_MAX_ITEMS": str(max(args.big, args.fast, 1000)),
        "JOBLOT_MAX_BODY_BYTES": "100000000",
    }
    found: dict[tuple[str, str], list[float]] = {}
    for backend in args.db:
        for case in args.cases:
            for n in range(args.repeat):
                print(f"{backend}: {case}, run {n + 1}...", file=sys.stderr)
                name = f"{backend}-{case.replace(' ', '-')}-{n}"
                with (
                    database(backend, tmp, name) as db,
                    running_server(db, args.workers, tmp / f"{name}.log", env) as (_, client),
                ):
                    found.setdefault((backend, case), []).append(run_case(case, client, args))
    return found


def render(
    found: dict[tuple[str, str], list[float]], args: argparse.Namespace, header: list[str]
) -> str:
    lines = ["## joblot bench/fairness.py", "", *header, ""]
    lines.append(
        f"`--workers {args.workers}`, {args.fast} fast items, slow job of {args.slow} x 1 s, "
        f"small job of {args.small} behind {args.big}; submit → completed, seconds"
    )
    lines += ["", "| backend | case | median (s) | runs (s) |", "|---|---|---:|---|"]
    for (backend, case), runs in found.items():
        shown = ", ".join(f"{r:.2f}" for r in runs)
        lines.append(f"| {backend} | {case} | {statistics.median(runs):.2f} | {shown} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", type=lambda s: s.split(","), default=["sqlite", "postgres"])
    p.add_argument("--workers", type=int, default=1, help="worker processes of the server")
    p.add_argument("--fast", type=int, default=1000, help="items of the fast job")
    p.add_argument("--slow", type=int, default=400, help="1-second items of the slow job")
    p.add_argument("--big", type=int, default=100_000, help="items of the big job")
    p.add_argument("--small", type=int, default=10, help="items of the small job")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--cases",
        type=lambda s: s.split(","),
        default=list(CASES),
        help=f"which of {', '.join(CASES)} (comma-separated)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one job may take")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    return run_bench(
        args, measure, render, postgres=postgres_url() if "postgres" in args.db else None
    )


if __name__ == "__main__":
    sys.exit(main())
