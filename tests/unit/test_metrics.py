"""The Prometheus exposition: what it adds up, and that Prometheus's own parser reads it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from joblot.app import App
from joblot.demo import app as demo_app
from joblot.metrics import HttpMetrics, exposition, route_label
from joblot.models import JOB_DURATION_BUCKETS, Status
from joblot.store import JobCounts, MetricCounts, MetricTotal

ODD_TYPE = 'odd "type"\\with\nnewline'


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by name and sorted labels, as Prometheus's parser reads them."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def counts(**changes: object) -> MetricCounts:
    base: dict[str, object] = {
        "jobs": [
            JobCounts("demo.echo", Status.WORKING, 2, 10, 1, 7),
            JobCounts("demo.echo", Status.COMPLETED, 3, 40, 2, 0),
            JobCounts(ODD_TYPE, Status.FAILED, 1, 0, 5, 0),
        ],
        "durations": [("demo.echo", 0, 2, 1.5), ("demo.echo", 3, 1, 20.0)],
        "leases_active": 4,
        "running": [("demo.echo", 3)],
        "totals": [
            MetricTotal("items_finished", "demo.echo", "success", 100.0),
            MetricTotal("jobs_finished", "demo.echo", "completed", 5.0),
            MetricTotal("job_duration", "demo.echo", "3", 5.0),
            MetricTotal("job_duration_seconds", "demo.echo", "", 90.0),
            MetricTotal("leases_expired", "", "", 6.0),
        ],
    }
    base.update(changes)
    return MetricCounts(**base)  # type: ignore[arg-type]


def test_counters_add_live_jobs_to_the_totals_kept_for_purged_ones() -> None:
    found = samples(exposition(counts(), HttpMetrics(), demo_app))
    echo = ("job_type", "demo.echo")
    assert found["joblot_items_finished_total", (echo, ("outcome", "success"))] == 150
    assert found["joblot_items_finished_total", (echo, ("outcome", "failure"))] == 3
    assert found["joblot_jobs_finished_total", (echo, ("status", "completed"))] == 8
    assert found["joblot_items_waiting", (echo,)] == 7
    assert found["joblot_items_waiting", (("job_type", "demo.sleep"),)] == 0  # registered, idle
    assert found["joblot_leases_active", ()] == 4
    assert found["joblot_leases_expired_total", ()] == 6
    assert ("joblot_jobs_finished_total", (echo, ("status", "working"))) not in found
    assert found["joblot_items_running", (echo,)] == 3
    assert found["joblot_items_running", (("job_type", "demo.sleep"),)] == 0


def test_cluster_wide_limits_are_exposed_beside_what_they_count() -> None:
    app = App()

    @app.job_type("crm.sync", concurrency=4, rate="120/m")
    def sync(item: dict[str, object], ctx: object) -> None: ...

    @app.job_type("free")
    def free(item: dict[str, object], ctx: object) -> None: ...

    found = samples(exposition(counts(running=[("crm.sync", 4)]), HttpMetrics(), app))
    crm = (("job_type", "crm.sync"),)
    assert found["joblot_job_type_concurrency_limit", crm] == 4
    assert found["joblot_job_type_rate_limit", crm] == 2.0  # per second
    assert found["joblot_items_running", crm] == 4
    assert ("joblot_job_type_concurrency_limit", (("job_type", "free"),)) not in found


def test_the_duration_histogram_is_cumulative_and_includes_purged_jobs() -> None:
    found = samples(exposition(counts(), HttpMetrics()))
    echo = ("job_type", "demo.echo")

    def bucket(le: str) -> float:
        return found["joblot_job_duration_seconds_bucket", (echo, ("le", le))]

    assert bucket("1.0") == 2
    assert bucket("10.0") == 2
    assert bucket("30.0") == 8  # 1 live + 5 purged in the bucket at index 3 (30 s)
    assert bucket("+Inf") == 8
    assert found["joblot_job_duration_seconds_count", (echo,)] == 8
    assert found["joblot_job_duration_seconds_sum", (echo,)] == 111.5
    assert (
        len([k for k in found if k[0] == "joblot_job_duration_seconds_bucket"])
        == len(JOB_DURATION_BUCKETS) + 1
    )


def test_label_values_are_escaped_so_any_job_type_parses() -> None:
    found = samples(exposition(counts(), HttpMetrics()))
    odd = (("job_type", ODD_TYPE), ("outcome", "failure"))
    assert found["joblot_items_finished_total", odd] == 5


def test_http_requests_are_counted_by_route_and_code_with_durations() -> None:
    http = HttpMetrics()
    http.observe("/api/v2/job_statuses/{id}", 200, 0.003)
    http.observe("/api/v2/job_statuses/{id}", 200, 0.2)
    http.observe("/api/v2/job_statuses/{id}", 404, 0.001)
    found = samples(exposition(counts(jobs=[], durations=[], totals=[]), http))
    route = ("route", "/api/v2/job_statuses/{id}")
    assert found["joblot_http_requests_total", (("code", "200"), route)] == 2
    assert found["joblot_http_requests_total", (("code", "404"), route)] == 1
    assert found["joblot_http_request_duration_seconds_bucket", (("le", "0.005"), route)] == 2
    assert found["joblot_http_request_duration_seconds_bucket", (("le", "0.25"), route)] == 3
    assert found["joblot_http_request_duration_seconds_count", (route,)] == 3


def test_an_empty_database_still_exposes_every_family() -> None:
    body = exposition(MetricCounts([], [], 0, []), HttpMetrics()).decode()
    for name in (
        "joblot_items_finished_total",
        "joblot_jobs_finished_total",
        "joblot_items_waiting",
        "joblot_leases_active",
        "joblot_leases_expired_total",
        "joblot_job_duration_seconds",
        "joblot_http_requests_total",
        "joblot_http_request_duration_seconds",
    ):
        assert f"# TYPE {name} " in body


def test_route_labels_are_templates_without_the_json_suffix() -> None:
    class FakeRoute:
        def __init__(self, path: str) -> None:
            self.path = path

    assert route_label({"route": FakeRoute("/api/v2/jobs.json")}) == "/api/v2/jobs"
    assert route_label({"route": FakeRoute("/api/v2/job_statuses/{id}")}) == (
        "/api/v2/job_statuses/{id}"
    )
    assert route_label({}) == "unmatched"
