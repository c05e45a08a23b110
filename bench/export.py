"""Export throughput and memory of a real `joblot serve`, printed as markdown tables.

Run `python bench/export.py [--items 1000000] [--small 100000] [--db sqlite|postgres|URL]
[--workers 2]`. It runs two `demo.echo` jobs (`--small` and `--items` items, every 7th item
failing) to completion, then stops that server and starts a fresh one without workers on the
same database, so that what the API process holds is the export's doing and not the
submission's. Then it downloads `/results/export` of each job as JSON lines and as CSV (and
the failures only) over one keep-alive connection, counting the entries, and samples the serve
process's resident memory (VmRSS) every 20 ms meanwhile. If the export held the job in memory,
the peak would grow tenfold from the small job to the big one; streamed, it stays flat.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from harness import (
    BenchError,
    Server,
    database,
    group_members,
    postgres_named,
    run_bench,
    running_server,
)

API = "/api/v2"
SAMPLE_SECONDS = 0.02


@dataclass
class Export:
    """One download: what was asked, what came, how long it took, the memory it took."""

    job: str
    format: str
    only_failed: bool
    entries: int
    bytes: int
    seconds: float
    rss_before_mib: float
    rss_peak_mib: float

    @property
    def rate(self) -> float:
        return self.entries / self.seconds


def submit(client: httpx.Client, items: int) -> str:
    """POST a demo.echo job of `items` items, every 7th failing; its id."""
    body = {
        "job": {
            "job_type": "demo.echo",
            "items": [
                {"id": i, **({"fail": f"row {i}"} if i % 7 == 0 else {})} for i in range(items)
            ],
        }
    }
    response = client.post(
        f"{API}/jobs", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    if response.status_code != 202:
        raise BenchError(f"submit answered {response.status_code}: {response.text[:300]}")
    job_id: str = response.json()["job_status"]["id"]
    return job_id


def wait_completed(client: httpx.Client, job_id: str, timeout: float) -> None:
    """Poll until the job completes; BenchError if it fails or takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"{API}/job_statuses/{job_id}.json").json()["job_status"]
        if status["status"] == "completed":
            return
        if status["status"] == "failed":
            raise BenchError(f"job {job_id} failed: {status['message']}")
        time.sleep(0.2)
    raise BenchError(f"job {job_id} did not complete in {timeout:.0f} s")


def _vm_rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def rss_sampler(pid: int) -> Iterator[list[int]]:
    """Samples the VmRSS (KiB) of `pid` every SAMPLE_SECONDS into the yielded list."""
    samples = [_vm_rss_kib(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            samples.append(_vm_rss_kib(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def download(
    client: httpx.Client, server: Server, job: tuple[str, str, int], fmt: str, *, failed: bool
) -> Export:
    """Stream one export to nowhere, counting entries and bytes."""
    name, job_id, items = job
    params = {"format": fmt, **({"success": "false"} if failed else {})}
    before = _vm_rss_kib(server.proc.pid)
    size = lines = 0
    with rss_sampler(server.proc.pid) as samples:
        started = time.perf_counter()
        path = f"{API}/job_statuses/{job_id}/results/export"
        with client.stream("GET", path, params=params) as response:
            if response.status_code != 200:
                response.read()
                raise BenchError(f"export answered {response.status_code}: {response.text[:300]}")
            for chunk in response.iter_bytes():
                size += len(chunk)
                lines += chunk.count(b"\n")
        seconds = time.perf_counter() - started
    entries = lines - 1 if fmt == "csv" else lines  # CSV has a header line
    expected = len(range(0, items, 7)) if failed else items
    if entries != expected:
        raise BenchError(f"{fmt} export of {name} had {entries} entries, expected {expected}")
    return Export(name, fmt, failed, entries, size, seconds, before / 1024, max(samples) / 1024)


def measure(args: argparse.Namespace, tmp: Path) -> tuple[list[Export], list[str]]:
    """Run the jobs, then export each on a fresh worker-less server."""
    env = {"JOBLOT_MAX_ITEMS": str(args.items), "JOBLOT_MAX_BODY_BYTES": "200000000"}
    notes = []
    with database(args.db, tmp, "export") as db:
        with running_server(db, args.workers, tmp / "run.log", env) as (_, client):
            jobs = []
            for name, items in (("small", args.small), ("big", args.items)):
                print(f"running the {items:,}-item job...", file=sys.stderr)
                started = time.monotonic()
                job_id = submit(client, items)
                wait_completed(client, job_id, args.timeout)
                notes.append(f"{name}: {items:,} items ran in {time.monotonic() - started:.1f} s")
                jobs.append((name, job_id, items))
        print("exporting...", file=sys.stderr)
        with running_server(db, 0, tmp / "export.log", env) as (server, client):
            client.get(f"{API}/job_statuses/{jobs[0][1]}.json")  # warm the process up
            exports = [
                download(client, server, job, fmt, failed=failed)
                for fmt, failed in (("jsonl", False), ("csv", False), ("csv", True))
                for job in jobs
            ]
            serve_hwm, _ = server.peak_rss_mib()
            notes.append(f"serve process peak (VmHWM) over all exports: {serve_hwm:,.0f} MiB")
            members = [p for p in group_members(server.proc.pid) if p != server.proc.pid]
            if members:
                notes.append(f"unexpected child processes of the export server: {members}")
    return exports, notes


def render(
    found: tuple[list[Export], list[str]], args: argparse.Namespace, header: list[str]
) -> str:
    """The report as markdown."""
    exports, notes = found
    lines = [
        "## joblot bench/export.py",
        "",
        *header,
        "",
        f"### Exporting results (`GET /results/export`, {args.db}, every 7th item failed)",
        "",
        "| job | format | entries | MiB sent | seconds | entries/s | serve RSS before MiB "
        "| serve RSS peak MiB | growth MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in exports:
        what = f"{e.format}{' (failures only)' if e.only_failed else ''}"
        lines.append(
            f"| {e.job} | {what} | {e.entries:,} | {e.bytes / 2**20:,.1f} | {e.seconds:.2f} "
            f"| {e.rate:,.0f} | {e.rss_before_mib:,.0f} | {e.rss_peak_mib:,.0f} "
            f"| {e.rss_peak_mib - e.rss_before_mib:+,.1f} |"
        )
    lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000, help="items of the big job")
    p.add_argument("--small", type=int, default=100_000, help="items of the small job")
    p.add_argument("--workers", type=int, default=2, help="worker processes running the jobs")
    p.add_argument(
        "--db",
        default="sqlite",
        help="'sqlite' (a temp file), 'postgres' (a fresh schema in env "
        "JOBLOT_BENCH_POSTGRES_URL or the local test database) or a database URL",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one job may take")
    return p.parse_args()


def main() -> int:
    """Run the measurements and print the report; the temp folder goes away in every case."""
    args = parse_args()
    return run_bench(args, measure, render, postgres=postgres_named(args.db))


if __name__ == "__main__":
    sys.exit(main())
