"""Database queries caused by open dashboards: an idle service, and one running a big job.

Run `python bench/dashboards.py [--dashboards 0,1,10,50] [--db sqlite|postgres]`. It starts
`joblot serve` (with `--workers` worker processes) through `count_queries.py`, which counts
every statement the API process sends to the database, and opens real dashboards: pages of
Debian's headless chromium, each in a browser context of its own (as separate people's
browsers are), on the job list. For each number of open dashboards it waits for them to
settle, then counts the API process's statements over `--seconds`. First on an idle service,
then while a `--items`-item job runs. The target: the count does not grow with the number of
dashboards. Servers, browsers, schemas and temp files are gone at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from harness import (
    BenchError,
    database,
    postgres_named,
    run_bench,
    running_server,
)

API = "/api/v2"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
COUNTER = Path(__file__).with_name("count_queries.py")
TOP_STATEMENTS = 8


@dataclass
class Level:
    """What one window with `dashboards` open counted."""

    dashboards: int
    seconds: float
    statements: int
    live: int  # dashboards whose event stream was connected
    by_statement: collections.Counter[str] = field(default_factory=collections.Counter)
    job_running: bool = True

    @property
    def per_second(self) -> float:
        return self.statements / self.seconds


class Counts:
    """The API process's statement counts, as count_queries.py writes them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> tuple[float, int, collections.Counter[str]]:
        deadline = time.monotonic() + 10
        while True:
            try:
                doc = orjson.loads(self.path.read_bytes())
                return doc["time"], doc["total"], collections.Counter(doc["by"])
            except (OSError, orjson.JSONDecodeError):
                if time.monotonic() > deadline:
                    raise BenchError(f"no query counts in {self.path}") from None
                time.sleep(0.05)


class Dashboards:
    """Open dashboards: one browser context (its own connections) and page each."""

    def __init__(self, browser: Browser, url: str) -> None:
        self.browser = browser
        self.url = url
        self.open: list[tuple[BrowserContext, Page]] = []

    def grow_to(self, count: int) -> None:
        while len(self.open) < count:
            context = self.browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(f"{self.url}/")
            page.wait_for_selector("section.list")
            self.open.append((context, page))

    def live(self) -> int:
        return sum(1 for _, page in self.open if page.locator('#live[data-state="live"]').count())

    def close_all(self) -> None:
        for context, _ in self.open:
            context.close()
        self.open.clear()


def measure(counts: Counts, dashboards: Dashboards, n: int, args: argparse.Namespace) -> Level:
    """Open up to `n` dashboards, let them settle, count statements over a window."""
    dashboards.grow_to(n)
    time.sleep(args.settle)
    t0, total0, by0 = counts.read()
    time.sleep(args.seconds)
    t1, total1, by1 = counts.read()
    by1.subtract(by0)
    return Level(n, t1 - t0, total1 - total0, dashboards.live(), +by1)


def submit_big_job(client: httpx.Client, args: argparse.Namespace) -> str:
    items = [{"id": i, "seconds": args.item_seconds} for i in range(args.items)]
    body = orjson.dumps({"job": {"job_type": "demo.sleep", "items": items}})
    response = client.post(
        f"{API}/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    if response.status_code != 202:
        raise BenchError(f"submit answered {response.status_code}: {response.text[:300]}")
    job_id: str = response.json()["job_status"]["id"]
    deadline = time.monotonic() + 60
    while status_of(client, job_id) == "queued":
        if time.monotonic() > deadline:
            raise BenchError("the big job was not started within 60 s")
        time.sleep(0.1)
    return job_id


def status_of(client: httpx.Client, job_id: str) -> str:
    response = client.get(f"{API}/job_statuses/{job_id}")
    if response.status_code != 200:
        raise BenchError(f"GET status answered {response.status_code}: {response.text[:300]}")
    status: str = response.json()["job_status"]["status"]
    return status


def still_running(client: httpx.Client, job_id: str) -> bool:
    return status_of(client, job_id) == "working"


def run(args: argparse.Namespace, tmp: Path) -> tuple[list[Level], list[Level]]:
    counts = Counts(tmp / "counts.json")
    command = [sys.executable, str(COUNTER), str(counts.path)]
    env = {"JOBLOT_MAX_ITEMS": str(max(args.items, 100_000))}
    with (
        database(args.db, tmp, "dashboards") as db,
        running_server(db, args.workers, tmp / "serve.log", env, command) as (server, client),
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        dashboards = Dashboards(browser, server.url)
        try:
            return measure_both(counts, dashboards, client, args)
        except BenchError as exc:
            raise BenchError(f"{exc}\nthe server's log ends with:\n{server.log_tail()}") from None
        finally:
            dashboards.close_all()
            browser.close()


def measure_both(
    counts: Counts, dashboards: Dashboards, client: httpx.Client, args: argparse.Namespace
) -> tuple[list[Level], list[Level]]:
    """Every level idle, then every level while the big job runs."""
    idle = [measure(counts, dashboards, n, args) for n in args.dashboards]
    dashboards.close_all()
    job_id = submit_big_job(client, args)
    busy = []
    for n in args.dashboards:
        level = measure(counts, dashboards, n, args)
        level.job_running = still_running(client, job_id)
        busy.append(level)
    client.post(f"{API}/job_statuses/{job_id}/cancel")
    return idle, busy


def table(title: str, levels: list[Level]) -> list[str]:
    base = levels[0].per_second if levels and levels[0].dashboards == 0 else None
    lines = [
        f"### {title}",
        "",
        "| open dashboards | live streams | API statements/s | caused by dashboards/s "
        "| per dashboard/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        caused = level.per_second - base if base is not None else None
        each = caused / level.dashboards if caused is not None and level.dashboards else None
        mark = "" if level.job_running else " *"
        lines.append(
            f"| {level.dashboards}{mark} | {level.live} | {level.per_second:,.1f} | "
            f"{'-' if caused is None else f'{caused:,.1f}'} | "
            f"{'-' if each is None else f'{each:,.2f}'} |"
        )
    if any(not level.job_running for level in levels):
        lines += ["", "\\* the job had finished by the end of this window: raise --item-seconds"]
    return lines


def top_statements(levels: list[Level]) -> list[str]:
    first, last = levels[0], levels[-1]
    names = {s for s, _ in (last.by_statement + first.by_statement).most_common(TOP_STATEMENTS)}
    lines = [
        f"### Statements/s by kind, busy: {first.dashboards} vs {last.dashboards} dashboards",
        "",
        f"| statement (first 60 characters) | {first.dashboards} | {last.dashboards} |",
        "|---|---:|---:|",
    ]
    for name in sorted(names, key=lambda s: -last.by_statement[s]):
        a = first.by_statement[name] / first.seconds
        b = last.by_statement[name] / last.seconds
        lines.append(f"| `{name.replace('|', '/')}` | {a:,.1f} | {b:,.1f} |")
    return lines


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dashboards", default="0,1,10,50", help="numbers of open dashboards")
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--workers", type=int, default=2, help="worker processes of serve")
    p.add_argument("--items", type=int, default=100_000, help="items of the running job")
    p.add_argument(
        "--item-seconds", type=float, default=0.03, help="each item's demo.sleep (job length)"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of each counting window")
    p.add_argument("--settle", type=float, default=3.0, help="wait after opening dashboards")
    args = p.parse_args()
    args.dashboards = sorted({int(n) for n in args.dashboards.split(",")})
    return args


def render(
    found: tuple[list[Level], list[Level]], args: argparse.Namespace, header: list[str]
) -> str:
    """The report as markdown."""
    idle, busy = found
    lines = [
        f"## joblot bench/dashboards.py ({args.db}, {args.workers} workers)",
        "",
        *header,
        "",
        *table("Idle service", idle),
        "",
        *table(f"While a {args.items:,}-item job runs", busy),
        "",
        *top_statements(busy),
        "",
        "Statements the API process sent to the database (SQLite: every statement, BEGIN and",
        "COMMIT included; PostgreSQL: every execute). Workers' statements are not counted: they",
        "do not depend on dashboards. 'caused by dashboards' is the rate minus the rate with none.",
    ]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    return run_bench(
        args,
        run,
        render,
        postgres=postgres_named(args.db),
        stopped="servers and browsers stopped",
    )


if __name__ == "__main__":
    sys.exit(main())
