"""Status reads against the framework's own ceiling: `wrk` against `joblot serve` and against
a hello-world Starlette app serving the same bytes, side by side in one run.

Run `python bench/reads.py [--db sqlite|postgres|URL] [--duration 10] [--rounds 1]`. It
starts `joblot serve` on a fresh database with a token, finishes one 20-item `demo.echo` job
(results inline), starts `bench/hello_app.py` answering the same body on uvicorn's defaults
and again without the access log, and runs `wrk -t1 -c64 --latency` for: hello 200, quiet
hello 200, joblot 200, joblot 304 (`If-None-Match`). Every process it started is stopped and
its temp folder removed, whatever happens. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

from bulk import job_body, submit, wait_finished
from harness import (
    BenchError,
    create_token,
    database,
    free_port,
    run_bench,
    running_server,
    stop_group,
)
from poll import cpu_seconds

API = "/api/v2"
BENCH = Path(__file__).resolve().parent
TARGETS = {"joblot 200": 0.5, "joblot 304": 0.7}  # the fraction of hello's req/s wanted
P99_TARGET_MS = 20.0
HELLO = "hello 200"  # uvicorn's defaults: uvloop, httptools, an access log line per request
QUIET_HELLO = "quiet hello 200"  # the same without the access log
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True)
class Load:
    """What wrk measured for one target."""

    name: str
    rate: float  # requests/s
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_us: float  # CPU of the server process per request


def parse_wrk(output: str) -> tuple[float, float, float, int]:
    """(req/s, p50 ms, p99 ms, requests) from `wrk --latency` output; BenchError if any
    request failed or was answered with a code outside 2xx/3xx."""
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    if bad or (errors and re.search(r"[1-9]", errors.group(1))):
        raise BenchError(f"wrk saw failed requests:\n{output}")

    def latency(percent: str) -> float:
        found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not found:
            raise BenchError(f"no {percent}% latency in wrk's output:\n{output}")
        return float(found.group(1)) * _UNITS[found.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    if not rate or not count:
        raise BenchError(f"unreadable wrk output:\n{output}")
    return float(rate.group(1)), latency("50"), latency("99"), int(count.group(1))


def run_wrk(
    name: str, url: str, headers: dict[str, str], pid: int, args: argparse.Namespace
) -> Load:
    """A warm-up, then `--duration` seconds of wrk against `url`; the server's CPU meanwhile."""
    flags = [f"-H{k}: {v}" for k, v in headers.items()]
    base = ["wrk", f"-t{args.threads}", f"-c{args.connections}", "--latency", *flags]
    warm = [*base, f"-d{args.warmup}s", url]
    subprocess.run(warm, capture_output=True, text=True, check=True, timeout=args.warmup + 30)
    print(f"  {name}...", file=sys.stderr)
    cpu = cpu_seconds(pid)
    done = subprocess.run(
        [*base, f"-d{args.duration}s", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=args.duration + 30,
    )
    cpu = cpu_seconds(pid) - cpu
    rate, p50, p99, count = parse_wrk(done.stdout)
    return Load(name, rate, p50, p99, count, cpu / max(count, 1) * 1e6)


# -- the two servers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A job read: its path, its body and ETag, the headers every read sends."""

    path: str
    body: bytes
    etag: str
    headers: dict[str, str]

    @property
    def conditional(self) -> dict[str, str]:
        """The headers of a read that gets a 304."""
        return {**self.headers, "If-None-Match": self.etag}


def finish_job(client: httpx.Client, headers: dict[str, str], timeout: float) -> str:
    """Submit a 20-item job and wait until it completed with its results inline; its id."""
    job_id: str = submit(client, job_body(20))["id"]
    final = wait_finished(client, job_id, "tight", timeout)
    if len(final["results"] or []) != 20:
        raise BenchError("the 20-item job does not carry its 20 results inline")
    return job_id


def read_job(client: httpx.Client, job_id: str, headers: dict[str, str]) -> Job:
    """The job's 200 body and ETag, checked to give a 304 when sent back."""
    path = f"{API}/job_statuses/{job_id}.json"
    got = client.get(path)
    tag = got.headers.get("etag", "")
    if got.status_code != 200 or not tag:
        raise BenchError(f"the status read answered {got.status_code} without an ETag")
    again = client.get(path, headers={"If-None-Match": tag})
    if again.status_code != 304:
        raise BenchError(f"If-None-Match with the ETag answered {again.status_code}, not 304")
    return Job(path, got.content, tag, headers)


@contextlib.contextmanager
def hello_server(body: bytes, tmp: Path, *, access_log: bool) -> Iterator[tuple[str, int]]:
    """bench/hello_app.py on uvicorn's defaults (but for the access log if not
    `access_log`), answering `body`; (its URL, its pid)."""
    (tmp / "hello.json").write_bytes(body)
    port = free_port()
    env = {**os.environ, "JOBLOT_BENCH_HELLO_BODY": str(tmp / "hello.json")}
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH), "--port", str(port)]
    argv += [] if access_log else ["--no-access-log"]
    with (tmp / "hello.log").open("ab") as out:
        proc = subprocess.Popen(
            [*argv, "hello_app:app"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_hello(proc, url, body)
        yield url, proc.pid
    finally:
        stop_group(proc, grace=10.0)


def _wait_hello(proc: subprocess.Popen[bytes], url: str, body: bytes) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the hello-world app exited with {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ready").content == body:
                return
        time.sleep(0.1)
    raise BenchError("the hello-world app did not answer in 30 s")


@dataclass(frozen=True)
class Target:
    """One thing wrk loads: a URL, the headers sent, the process that answers."""

    name: str
    url: str
    headers: dict[str, str]
    pid: int


def measure(args: argparse.Namespace, tmp: Path) -> list[list[Load]]:
    """The job finished by a server with workers; then a server without workers (an API
    node: no worker processes share the cores) and the hellos, all up at once, and
    `--rounds` rounds of wrk against each target in turn (so that a change in the machine's
    load hits every target alike)."""
    env = {"JOBLOT_RATE_LIMIT_PER_MINUTE": "1000000000"}  # measure reads, not the limiter
    with ExitStack() as stack:
        db_url = stack.enter_context(database(args.db, tmp, "reads"))
        token = create_token(db_url, "bench")  # before the servers start, as in production
        headers = {"Authorization": f"Bearer {token}"}
        with running_server(db_url, args.workers, tmp / "work.log", env) as (_, client):
            client.headers.update(headers)
            finished = finish_job(client, headers, args.timeout)
        server, client = stack.enter_context(running_server(db_url, 0, tmp / "serve.log", env))
        client.headers.update(headers)
        job = read_job(client, finished, headers)
        queued = read_job(client, submit(client, job_body(20))["id"], headers)
        hello = stack.enter_context(hello_server(job.body, tmp, access_log=True))
        quiet = stack.enter_context(hello_server(job.body, tmp, access_log=False))
        pid = server.proc.pid
        targets = [
            Target(HELLO, hello[0] + job.path, headers, hello[1]),
            Target(QUIET_HELLO, quiet[0] + job.path, headers, quiet[1]),
            Target("joblot 200", server.url + job.path, headers, pid),
            Target("joblot 304", server.url + job.path, job.conditional, pid),
        ]
        if not args.skip_queued:
            targets += [
                Target("queued job 200", server.url + queued.path, headers, pid),
                Target("queued job 304", server.url + queued.path, queued.conditional, pid),
            ]
        rounds = []
        for n in range(args.rounds):
            print(f"round {n + 1} of {args.rounds}", file=sys.stderr)
            rounds.append([run_wrk(t.name, t.url, t.headers, t.pid, args) for t in targets])
        return rounds


def medians(rounds: list[list[Load]]) -> list[Load]:
    """Each target's median over the rounds, field by field."""
    return [
        Load(
            runs[0].name,
            statistics.median(r.rate for r in runs),
            statistics.median(r.p50_ms for r in runs),
            statistics.median(r.p99_ms for r in runs),
            sum(r.requests for r in runs),
            statistics.median(r.cpu_us for r in runs),
        )
        for runs in zip(*rounds, strict=True)
    ]


# -- report ---------------------------------------------------------------------------------


def table(loads: list[Load]) -> list[str]:
    """req/s, p50, p99 and the ratio to each hello of each target, against the targets (which
    are set against hello on uvicorn's defaults)."""
    hello, quiet = loads[0].rate, loads[1].rate
    lines = [
        "| target | req/s | p50 ms | p99 ms | server CPU µs/req | of hello | of quiet hello "
        "| wanted (of hello) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for load in loads:
        wanted = TARGETS.get(load.name)
        verdict = ""
        if wanted is not None:
            met = load.rate / hello >= wanted and load.p99_ms < P99_TARGET_MS
            verdict = f"≥ {wanted}, p99 < {P99_TARGET_MS:.0f} ms: {'yes' if met else 'NO'}"
        lines.append(
            f"| {load.name} | {load.rate:,.0f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | "
            f"{load.cpu_us:,.0f} | {load.rate / hello:.2f} | {load.rate / quiet:.2f} | {verdict} |"
        )
    return lines


def parse_args() -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="sqlite", help="sqlite, postgres, or a database URL")
    p.add_argument("--duration", type=int, default=10, help="seconds of wrk per target")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each target")
    p.add_argument("--connections", type=int, default=64, help="wrk's keep-alive connections")
    p.add_argument("--threads", type=int, default=1, help="wrk's threads")
    p.add_argument("--rounds", type=int, default=1, help="rounds over every target (medians)")
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes that run the job to read"
    )
    p.add_argument(
        "--skip-queued", action="store_true", help="no reads of a queued job (from the database)"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds the 20-item job may take")
    return p.parse_args()


def render(rounds: list[list[Load]], args: argparse.Namespace, header: list[str]) -> str:
    """The report as markdown."""
    run = (
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency per target "
        f"(after {args.warmup} s of warm-up), "
        f"{args.db}, one finished 20-item job (results inline), Bearer token"
    )
    lines = ["## joblot bench/reads.py", "", *header, f"- load: {run}", ""]
    if args.rounds > 1:
        lines += [f"Medians of {args.rounds} rounds.", ""]
    lines += table(medians(rounds))
    return "\n".join(lines)


def main() -> int:
    """Run the measurements and print the report; the temp folder goes away in every case."""
    return run_bench(parse_args(), measure, render)


if __name__ == "__main__":
    sys.exit(main())
