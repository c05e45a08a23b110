"""Prometheus metrics: counts read from the database at scrape time, plus this API process's
own HTTP counters, in the Prometheus text format.

Everything about jobs, items and leases is counted from the database when `/metrics` is
scraped (the jobs table, live leases, and `metric_totals` for purged jobs and lapsed leases),
so the numbers are the cluster's, right however many worker processes and API nodes there
are, and every API node answers the same. The HTTP metrics are this process's own: scrape
every API node and sum them.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from joblot.app import JobType
from joblot.models import JOB_DURATION_BUCKETS
from joblot.store import MetricCounts

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "unmatched"  # the route label of requests no route answers (kept to one series)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return f"{{{inner}}}" if inner else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _bound(value: float) -> str:
    """A bucket bound as Prometheus's own clients write `le`: `0.5`, `1.0`, `+Inf`."""
    return "+Inf" if value == float("inf") else repr(float(value))


@dataclass
class Histogram:
    """Counts per bucket (not cumulative), their sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def add(self, bucket: int, count: int, seconds: float) -> None:
        """`count` observations in bucket `bucket` that sum to `seconds`."""
        self.counts[bucket] += count
        self.total += seconds

    def observe(self, seconds: float) -> None:
        """One observation."""
        self.add(bisect.bisect_left(self.bounds, seconds), 1, seconds)


class Exposition:
    """Metric families written out one after another in the Prometheus text format."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, text: str, samples: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        """A counter or gauge: `# HELP`, `# TYPE` and one line per labelled sample."""
        self.lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels.items())} {_number(value)}")

    def histogram(
        self, name: str, text: str, series: dict[tuple[tuple[str, str], ...], Histogram]
    ) -> None:
        """A histogram: cumulative `_bucket` lines with `le`, then `_sum` and `_count`."""
        self.lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
        for labels, hist in sorted(series.items()):
            running = 0
            for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                running += count
                le = (*labels, ("le", _bound(bound)))
                self.lines.append(f"{name}_bucket{_labels(le)} {running}")
            self.lines.append(f"{name}_sum{_labels(labels)} {_number(hist.total)}")
            self.lines.append(f"{name}_count{_labels(labels)} {running}")

    def render(self) -> bytes:
        """The whole exposition."""
        return ("\n".join(self.lines) + "\n").encode()


# -- this process's HTTP requests ----------------------------------------------------------------


class HttpMetrics:
    """Requests answered by this API process, by route and code, and how long they took.

    Updated on the event loop only, so plain dicts are enough (no locks on the hot path).
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.durations: dict[str, Histogram] = {}

    def observe(self, route: str, code: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests[route, str(code)] += 1
        hist = self.durations.get(route)
        if hist is None:
            hist = self.durations[route] = Histogram(HTTP_DURATION_BUCKETS)
        hist.observe(seconds)


def route_label(scope: Scope) -> str:
    """The route template that answered (`/api/v2/job_statuses/{id}`), with a `.json`
    suffix taken off so that both spellings of a path count as one route."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    return path.removesuffix(".json")


class MetricsMiddleware:
    """Pure ASGI middleware that counts every HTTP request into an HttpMetrics. A stream or a
    long poll counts from its start to its end."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500  # unless a response starts: an exception that escaped everything

        async def counting_send(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.observe(route_label(scope), code, time.perf_counter() - started)


# -- the exposition ------------------------------------------------------------------------------


def _totals(counts: MetricCounts, name: str) -> Iterator[tuple[str, str, float]]:
    for total in counts.totals:
        if total.name == name:
            yield total.job_type, total.label, total.value


def _items_and_jobs(
    counts: MetricCounts, job_types: Iterable[str]
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float], dict[str, float]]:
    items: dict[tuple[str, str], float] = defaultdict(float)
    jobs: dict[tuple[str, str], float] = defaultdict(float)
    waiting: dict[str, float] = dict.fromkeys(job_types, 0.0)
    for row in counts.jobs:
        items[row.job_type, "success"] += row.succeeded
        items[row.job_type, "failure"] += row.failed
        if row.status.finished:
            jobs[row.job_type, row.status.value] += row.jobs
        else:
            waiting[row.job_type] = waiting.get(row.job_type, 0.0) + row.waiting
    for job_type, outcome, value in _totals(counts, "items_finished"):
        items[job_type, outcome] += value
    for job_type, status, value in _totals(counts, "jobs_finished"):
        jobs[job_type, status] += value
    return items, jobs, waiting


def _durations(counts: MetricCounts) -> dict[tuple[tuple[str, str], ...], Histogram]:
    series: dict[tuple[tuple[str, str], ...], Histogram] = {}

    def hist(job_type: str) -> Histogram:
        key = (("job_type", job_type),)
        if key not in series:
            series[key] = Histogram(JOB_DURATION_BUCKETS)
        return series[key]

    for job_type, bucket, jobs, seconds in counts.durations:
        hist(job_type).add(bucket, jobs, seconds)
    for job_type, label, value in _totals(counts, "job_duration"):
        hist(job_type).add(min(int(label), len(JOB_DURATION_BUCKETS)), int(value), 0.0)
    for job_type, _, value in _totals(counts, "job_duration_seconds"):
        hist(job_type).total += value
    return series


def exposition(counts: MetricCounts, http: HttpMetrics, job_types: Iterable[JobType] = ()) -> bytes:
    """Every joblot metric in the Prometheus text format. `job_types` (the registered ones)
    get `items_waiting` and `items_running` series even while none of their items waits or
    runs, and their cluster-wide limits."""
    out = Exposition()
    registered = list(job_types)
    items, jobs, waiting = _items_and_jobs(counts, [t.name for t in registered])
    out.family(
        "joblot_items_finished_total",
        "counter",
        "Items finished for good, by job type and outcome (success or failure).",
        (({"job_type": t, "outcome": o}, v) for (t, o), v in sorted(items.items())),
    )
    out.family(
        "joblot_jobs_finished_total",
        "counter",
        "Jobs finished, by job type and final status (completed or failed).",
        (({"job_type": t, "status": s}, v) for (t, s), v in sorted(jobs.items())),
    )
    out.family(
        "joblot_items_waiting",
        "gauge",
        "Items of queued or working jobs not yet claimed by a worker, by job type.",
        (({"job_type": t}, v) for t, v in sorted(waiting.items())),
    )
    running = dict.fromkeys((t.name for t in registered), 0.0)
    running.update((t, float(n)) for t, n in counts.running)
    out.family(
        "joblot_items_running",
        "gauge",
        "Items held by workers under live leases, by job type (what a concurrency limit counts).",
        (({"job_type": t}, v) for t, v in sorted(running.items())),
    )
    _limit_families(out, registered)
    out.family(
        "joblot_leases_active",
        "gauge",
        "Batches of items held by workers under a live lease.",
        [({}, counts.leases_active)],
    )
    lapsed = sum(v for _, _, v in _totals(counts, "leases_expired"))
    out.family(
        "joblot_leases_expired_total",
        "counter",
        "Leases that lapsed because their worker stopped renewing them (a worker lost).",
        [({}, lapsed)],
    )
    out.histogram(
        "joblot_job_duration_seconds",
        "Time from a job's creation to its end, by job type.",
        _durations(counts),
    )
    deliveries: dict[str, float] = defaultdict(float)
    for _, outcome, value in _totals(counts, "webhook_deliveries"):
        deliveries[outcome] += value
    out.family(
        "joblot_webhook_deliveries_total",
        "counter",
        "Webhook delivery attempts, by outcome.",
        (({"outcome": o}, v) for o, v in sorted(deliveries.items())),
    )
    _http_families(out, http)
    return out.render()


def _limit_families(out: Exposition, job_types: list[JobType]) -> None:
    limits = [(t.name, t.limit) for t in job_types if t.limit is not None]
    out.family(
        "joblot_job_type_concurrency_limit",
        "gauge",
        "Items of the job type that may run at once, cluster-wide (types with a limit only).",
        (({"job_type": name}, limit.concurrency) for name, limit in limits if limit.concurrency),
    )
    out.family(
        "joblot_job_type_rate_limit",
        "gauge",
        "Items of the job type that may start per second, cluster-wide (types with a limit only).",
        (({"job_type": name}, limit.rate / limit.per) for name, limit in limits if limit.rate),
    )


def _http_families(out: Exposition, http: HttpMetrics) -> None:
    out.family(
        "joblot_http_requests_total",
        "counter",
        "HTTP requests answered by this API process, by route template and status code.",
        (({"route": r, "code": c}, v) for (r, c), v in sorted(http.requests.items())),
    )
    out.histogram(
        "joblot_http_request_duration_seconds",
        "Time to answer an HTTP request in this API process (streams: until they end).",
        {(("route", r),): h for r, h in http.durations.items()},
    )
