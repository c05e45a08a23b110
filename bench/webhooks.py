"""Completion webhooks on a real `joblot serve`: how soon an event arrives after its job ends,
and whether receivers that hang slow the items of other jobs down.

Run `python bench/webhooks.py [--jobs 200] [--items 20000] [--hanging 20] [--workers 2]
[--db sqlite|postgres]`. A receiver runs in this process (a threaded HTTP server on
127.0.0.1, so the server runs with JOBLOT_WEBHOOK_ALLOW_PRIVATE=1); it verifies every
delivery's signature with `joblot.verify_webhook` and the tenant's secret from
`joblot webhooks secret`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson

from bulk import job_body, submit, wait_finished
from harness import (
    BenchError,
    postgres_schema,
    postgres_url,
    run_bench,
    run_joblot,
    running_server,
)
from joblot import WebhookVerificationError, verify_webhook

API = "/api/v2"


class Receiver:
    """Answers 200 (or holds the request open, when `hang`), verifying every signature."""

    def __init__(self, secret: str, *, hang: bool) -> None:
        self.secret, self.hang = secret, hang
        self.arrivals: dict[str, list[float]] = {}  # webhook-id -> wall-clock receipt times
        self.latencies: list[float] = []  # seconds from the job's end to the first receipt
        self.bad = 0  # deliveries whose signature did not verify
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def received(self, now: float, body: bytes, headers: dict[str, str]) -> None:
        try:
            event = verify_webhook(self.secret, body, headers)
        except WebhookVerificationError:
            with self.lock:
                self.bad += 1
            return
        ended = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        with self.lock:
            seen = self.arrivals.setdefault(headers["webhook-id"], [])
            if not seen:
                self.latencies.append(now - ended)
            seen.append(now)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received(time.time(), body, headers)
                if receiver.hang:
                    receiver.release.wait()
                    return
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def receiving(secret: str, *, hang: bool) -> Iterator[Receiver]:
    receiver = Receiver(secret, hang=hang)
    try:
        yield receiver
    finally:
        receiver.close()


def hooked(items: int, url: str) -> bytes:
    job = {"job_type": "demo.echo", "items": [{"id": i} for i in range(items)], "callback_url": url}
    return orjson.dumps({"job": job})


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if values else 0.0


def bench_latency(client: httpx.Client, secret: str, jobs: int) -> list[str]:
    """Submit `jobs` one-item jobs with a callback; time each job's end → its event."""
    with receiving(secret, hang=False) as receiver:
        started = time.monotonic()
        for _ in range(jobs):
            submit(client, hooked(1, receiver.url))
        deadline = time.monotonic() + 120
        while len(receiver.arrivals) < jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        spent = time.monotonic() - started
        time.sleep(1.0)  # anything sent twice would show up by now
        if len(receiver.arrivals) < jobs:
            raise BenchError(f"{len(receiver.arrivals)} of {jobs} events arrived in 120 s")
        ms = [s * 1000 for s in receiver.latencies]
        twice = sum(1 for times in receiver.arrivals.values() if len(times) > 1)
        p50, p95, p99 = (quantile(ms, q) for q in (50, 95, 99))
        return [
            "| jobs | events/s | job end → event p50 | p95 | p99 | max | sent twice | bad sig. |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {jobs} | {jobs / spent:,.0f} | {p50:.0f} ms | {p95:.0f} ms | {p99:.0f} ms"
            f" | {max(ms):.0f} ms | {twice} | {receiver.bad} |",
        ]


def items_per_second(client: httpx.Client, items: int) -> float:
    started = time.monotonic()
    status = submit(client, job_body(items))
    wait_finished(client, status["id"], "tight", 600)
    return items / (time.monotonic() - started)


def bench_isolation(client: httpx.Client, secret: str, items: int, hanging: int) -> list[str]:
    """Items/s of a big job alone, then while `hanging` receivers hold their deliveries."""
    items_per_second(client, min(items, 1000))  # warm-up: both runs start alike
    alone = items_per_second(client, items)
    with receiving(secret, hang=True) as receiver:
        for _ in range(hanging):
            submit(client, hooked(1, receiver.url))
        deadline = time.monotonic() + 60
        while len(receiver.arrivals) < min(hanging, 10) and time.monotonic() < deadline:
            time.sleep(0.01)
        held = len(receiver.arrivals)
        beside = items_per_second(client, items)
        still = len(receiver.arrivals)  # never answered: each is still held open
    return [
        "| items | alone: items/s | beside hanging receivers: items/s | deliveries held open |",
        "|---:|---:|---:|---:|",
        f"| {items:,} | {alone:,.0f} | {beside:,.0f} | {held} at start, {still} at the end |",
    ]


def parse_args() -> argparse.Namespace:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="one-item jobs timed (200)")
    parser.add_argument("--items", type=int, default=20_000, help="items of the big job")
    parser.add_argument("--hanging", type=int, default=20, help="deliveries left hanging")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--db", default="sqlite", help="sqlite or postgres")
    return parser.parse_args()


def measure(args: argparse.Namespace, tmp: Path) -> list[str]:
    """Both measurements on one server and database, as markdown lines."""
    env = {
        "JOBLOT_WEBHOOK_ALLOW_PRIVATE": "1",
        "JOBLOT_WEBHOOK_TIMEOUT_SECONDS": "300",  # the hanging receivers stay hanging
        "JOBLOT_MAX_ACTIVE_JOBS": "100000",
        "JOBLOT_RATE_LIMIT_PER_MINUTE": "100000000",
    }
    with ExitStack() as stack:
        if args.db == "postgres":
            db = stack.enter_context(postgres_schema(postgres_url(), "joblot-bench-hooks")).url
        else:
            db = f"sqlite:///{tmp}/hooks.db"
            run_joblot("migrate", "--db", db)
        secret = run_joblot("webhooks", "secret", "--tenant", "default", "--db", db).strip()
        _, client = stack.enter_context(running_server(db, args.workers, tmp / "serve.log", env))
        print("from a job's end to its event...", file=sys.stderr)
        latency = bench_latency(client, secret, args.jobs)
        print("items beside receivers that never answer...", file=sys.stderr)
        isolation = bench_isolation(client, secret, args.items, args.hanging)
    return [
        f"`joblot serve --workers {args.workers}` on {args.db}",
        "",
        "## From a job's end to its event",
        "",
        *latency,
        "",
        "## Items beside receivers that never answer",
        "",
        *isolation,
    ]


def render(lines: list[str], args: argparse.Namespace, header: list[str]) -> str:
    """The report as markdown."""
    return "\n".join(["# Webhooks", "", *header, "", *lines, ""])


def main() -> int:
    """Run the measurements and print the report; the temp folder goes away in every case."""
    return run_bench(parse_args(), measure, render)


if __name__ == "__main__":
    sys.exit(main())
