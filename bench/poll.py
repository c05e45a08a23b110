"""The cost of polling one JobStatus, and of authenticating the poll, on a SQLite `joblot serve`.

Run `python bench/poll.py [--requests 2000] [--concurrency 8] [--rounds 3]`. It starts two
servers on fresh SQLite files, one without tokens (open on loopback) and one with a token
created before it started, stops them with SIGTERM then SIGKILL, and deletes its temporary
folder, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bulk import job_body, submit, wait_finished
from harness import BenchError, Server, create_token, run_bench, running_server

API = "/api/v2"
WARMUP = 100
EMAIL = "bench@example.com"


@dataclass(frozen=True)
class Mode:
    """One way of reading the status: which server, which credentials, 200 or 304."""

    name: str
    server: str  # "open" or "token"
    headers: dict[str, str]
    expect: int


@dataclass
class Timing:
    """Latencies and rates of one mode, over every round."""

    millis: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # requests/s of each round
    cpu_us: list[float] = field(default_factory=list)  # serve-process CPU per request
    client_us: list[float] = field(default_factory=list)  # this process's CPU per request

    def quantile(self, q: int) -> float:
        """The q-th percentile in ms."""
        return statistics.quantiles(self.millis, n=100, method="inclusive")[q - 1]


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of a process so far, from /proc/<pid>/task/*/schedstat."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


# -- one finished 20-item job per server ----------------------------------------------------


def prepare_job(client: httpx.Client, headers: dict[str, str], timeout: float) -> tuple[str, str]:
    """Submit a 20-item job, wait until it is completed; (its id, its current ETag)."""
    client.headers.update(headers)
    job_id = submit(client, job_body(20))["id"]
    final = wait_finished(client, job_id, "tight", timeout)
    if final["total"] != 20 or len(final["results"] or []) != 20:
        raise BenchError("the 20-item job does not carry its 20 results inline")
    tag = client.get(f"{API}/job_statuses/{job_id}.json").headers.get("etag")
    if not tag:
        raise BenchError("the status answer carries no ETag")
    return job_id, tag


# -- sequential and concurrent reads --------------------------------------------------------


def check(response: httpx.Response, expect: int) -> None:
    """Every answer must be the one expected: a 401 or 429 would be cheap and mislead."""
    if response.status_code != expect:
        raise BenchError(f"expected {expect}, got {response.status_code}: {response.text[:200]}")


@dataclass
class Meter:
    """Wall time and CPU (the server's and this process's) of the timed part of a reader."""

    server_pid: int
    started: tuple[float, float, float] = (0.0, 0.0, 0.0)
    used: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _now(self) -> tuple[float, float, float]:
        return time.perf_counter(), cpu_seconds(self.server_pid), time.process_time()

    def start(self) -> None:
        """Start counting (after the warm-up)."""
        self.started = self._now()

    def stop(self) -> None:
        """Stop counting: `used` is (wall s, server CPU s, client CPU s)."""
        now = self._now()
        self.used = (now[0] - self.started[0], now[1] - self.started[1], now[2] - self.started[2])


def sequential(url: str, path: str, mode: Mode, count: int, meter: Meter) -> list[float]:
    """`count` GETs one after another over one keep-alive connection; ms each."""
    with httpx.Client(base_url=url, headers=mode.headers, timeout=30.0) as client:
        for _ in range(WARMUP):
            check(client.get(path), mode.expect)
        millis = []
        meter.start()
        for _ in range(count):
            t0 = time.perf_counter()
            response = client.get(path)
            millis.append((time.perf_counter() - t0) * 1000)
            check(response, mode.expect)
        meter.stop()
        return millis


async def _concurrent(
    url: str, path: str, mode: Mode, count: int, meter: Meter, *, tasks: int
) -> list[float]:
    limits = httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
    async with httpx.AsyncClient(
        base_url=url, headers=mode.headers, timeout=30.0, limits=limits
    ) as client:
        millis: list[float] = []

        async def reader(n: int) -> None:
            for _ in range(n):
                t0 = time.perf_counter()
                response = await client.get(path)
                millis.append((time.perf_counter() - t0) * 1000)
                check(response, mode.expect)

        await asyncio.gather(*(reader(WARMUP // tasks + 1) for _ in range(tasks)))
        millis.clear()
        meter.start()
        await asyncio.gather(*(reader(count // tasks) for _ in range(tasks)))
        meter.stop()
        return millis


def concurrent(
    url: str, path: str, mode: Mode, count: int, meter: Meter, *, tasks: int
) -> list[float]:
    """`count` GETs from `tasks` coroutines at once, each on its own keep-alive connection."""
    return asyncio.run(_concurrent(url, path, mode, count, meter, tasks=tasks))


Reader = Callable[[str, str, Mode, int, Meter], list[float]]


def measure_round(
    servers: dict[str, tuple[Server, str]], modes: list[Mode], read: Reader, count: int
) -> dict[str, tuple[list[float], float, float, float]]:
    """Every mode once: (ms each, req/s, serve and client CPU µs per request) by mode name."""
    out = {}
    for mode in modes:
        server, job_id = servers[mode.server]
        meter = Meter(server.proc.pid)
        millis = read(server.url, f"{API}/job_statuses/{job_id}.json", mode, count, meter)
        wall, server_cpu, client_cpu = meter.used
        n = len(millis)
        out[mode.name] = (millis, n / wall, server_cpu / n * 1e6, client_cpu / n * 1e6)
    return out


def measure_all(
    servers: dict[str, tuple[Server, str]], modes: list[Mode], args: argparse.Namespace
) -> dict[str, dict[str, Timing]]:
    """`--rounds` rounds; each runs every mode in turn, so drifts hit all modes alike."""
    readers: dict[str, Reader] = {
        "sequential": sequential,
        f"{args.concurrency} concurrent": lambda u, p, m, n, meter: concurrent(
            u, p, m, n, meter, tasks=args.concurrency
        ),
    }
    results: dict[str, dict[str, Timing]] = {
        kind: {m.name: Timing() for m in modes} for kind in readers
    }
    for n in range(args.rounds):
        for kind, read in readers.items():
            print(f"  round {n + 1}, {kind}...", file=sys.stderr)
            measured = measure_round(servers, modes, read, args.requests)
            for name, (millis, rate, cpu, client_cpu) in measured.items():
                timing = results[kind][name]
                timing.millis += millis
                timing.rates.append(rate)
                timing.cpu_us.append(cpu)
                timing.client_us.append(client_cpu)
    return results


# -- report ---------------------------------------------------------------------------------


def table(kind: str, timings: dict[str, Timing], args: argparse.Namespace) -> list[str]:
    """One table of every mode for one way of reading."""
    per_round = args.requests if kind == "sequential" else args.requests // args.concurrency
    count = per_round * (1 if kind == "sequential" else args.concurrency)
    lines = [
        f"### Status reads, {kind} ({count:,} GETs per mode and round, {args.rounds} rounds; "
        "req/s and CPU are medians of the rounds)",
        "",
        "| read | req/s | median ms | p99 ms | serve CPU µs/req | bench client CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in timings.items():
        lines.append(
            f"| {name} | {statistics.median(t.rates):,.0f} | "
            f"{statistics.median(t.millis):.3f} | {t.quantile(99):.3f} | "
            f"{statistics.median(t.cpu_us):,.0f} | {statistics.median(t.client_us):,.0f} |"
        )
    return lines


def cost_table(results: dict[str, dict[str, Timing]]) -> list[str]:
    """Each authenticated mode minus the open one: the cost of auth per request."""
    lines = [
        "### Cost of auth (authenticated minus open, per request)",
        "",
        "| reads | compared | Δ median latency µs | Δ time per request at the measured "
        "rate µs | Δ serve CPU µs/req |",
        "|---|---|---:|---:|---:|",
    ]
    pairs = [
        ("Bearer", "open (no token)"),
        ("Basic", "open (no token)"),
        ("Bearer, 304", "open, 304"),
        ("Basic, 304", "open, 304"),
    ]
    for kind, timings in results.items():
        for mode, base in pairs:
            a, b = timings[mode], timings[base]
            latency = (statistics.median(a.millis) - statistics.median(b.millis)) * 1000
            per_request = (1 / statistics.median(a.rates) - 1 / statistics.median(b.rates)) * 1e6
            cpu = statistics.median(a.cpu_us) - statistics.median(b.cpu_us)
            lines.append(
                f"| {kind} | {mode} vs {base} | {latency:+,.0f} | {per_request:+,.0f} | "
                f"{cpu:+,.0f} |"
            )
    return lines


# -- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="GETs per mode and round")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent readers")
    p.add_argument("--rounds", type=int, default=3, help="rounds over every mode")
    p.add_argument("--workers", type=int, default=1, help="worker processes of each server")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds the 20-item job may take")
    return p.parse_args()


def modes_for(token: str, tags: dict[str, str]) -> list[Mode]:
    """The six ways of reading: open, Bearer and Basic, each for a 200 and a 304."""
    bearer = {"Authorization": f"Bearer {token}"}
    basic_credentials = base64.b64encode(f"{EMAIL}/token:{token}".encode()).decode()
    basic = {"Authorization": f"Basic {basic_credentials}"}
    return [
        Mode("open (no token)", "open", {}, 200),
        Mode("Bearer", "token", bearer, 200),
        Mode("Basic", "token", basic, 200),
        Mode("open, 304", "open", {"If-None-Match": tags["open"]}, 304),
        Mode("Bearer, 304", "token", {**bearer, "If-None-Match": tags["token"]}, 304),
        Mode("Basic, 304", "token", {**basic, "If-None-Match": tags["token"]}, 304),
    ]


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Timing]]:
    """Both servers up at once, a finished job on each, then the rounds of reads."""
    token_db = f"sqlite:///{tmp / 'token.db'}"
    token = create_token(token_db, "bench")  # before the server starts, as in production
    env = {"JOBLOT_RATE_LIMIT_PER_MINUTE": "100000000"}  # measure auth, not the limiter
    with ExitStack() as stack:
        servers, tags = {}, {}
        for name, db, headers in (
            ("open", f"sqlite:///{tmp / 'open.db'}", {}),
            ("token", token_db, {"Authorization": f"Bearer {token}"}),
        ):
            server, client = stack.enter_context(
                running_server(db, args.workers, tmp / f"{name}.log", env)
            )
            job_id, tags[name] = prepare_job(client, headers, args.timeout)
            servers[name] = (server, job_id)
        unauthenticated = httpx.get(f"{servers['token'][0].url}{API}/job_statuses.json")
        if unauthenticated.status_code != 401:
            raise BenchError(f"the token server answered {unauthenticated.status_code} to no token")
        return measure_all(servers, modes_for(token, tags), args)


def render(
    results: dict[str, dict[str, Timing]], args: argparse.Namespace, header: list[str]
) -> str:
    """The report as markdown."""
    lines = ["## joblot bench/poll.py (SQLite)", "", *header]
    for kind, timings in results.items():
        lines += ["", *table(kind, timings, args)]
    lines += ["", *cost_table(results)]
    return "\n".join(lines)


def main() -> int:
    """Run the measurements and print the report; the temp folder goes away in every case."""
    return run_bench(parse_args(), measure, render)


if __name__ == "__main__":
    sys.exit(main())
