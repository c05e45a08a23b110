"""What operators see of real `joblot serve` processes: Prometheus metrics that count every
worker process once, and logs in which every line is a JSON object when asked for."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from .conftest import JOBLOT


def scrape(server: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of `/metrics`, read with Prometheus's own parser."""
    response = server.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def sample(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[name, frozenset(labels.items())]


def test_metrics_count_each_item_once_across_two_worker_processes_and_two_api_nodes(
    start_server: Any,
) -> None:
    server = start_server(workers=2)
    items: list[dict[str, Any]] = [{"id": i, "seconds": 0.01} for i in range(200)]
    items[137]["fail"] = "the one bad item"
    job = server.submit("demo.sleep", items)
    final = server.wait(job["id"])
    assert (final["status"], final["progress"]) == ("completed", 200)
    other_node = start_server(workers=0, db=server.db)  # a second API node on the same database
    for node in (server, other_node):
        found = scrape(node)
        kind = {"job_type": "demo.sleep"}
        assert sample(found, "joblot_items_finished_total", outcome="success", **kind) == 199
        assert sample(found, "joblot_items_finished_total", outcome="failure", **kind) == 1
        assert sample(found, "joblot_jobs_finished_total", status="completed", **kind) == 1
        assert sample(found, "joblot_job_duration_seconds_count", **kind) == 1
        assert sample(found, "joblot_items_waiting", **kind) == 0
        assert sample(found, "joblot_leases_active") == 0
        assert sample(found, "joblot_leases_expired_total") == 0
    # HTTP metrics are each API process's own
    found = scrape(server)
    assert sample(found, "joblot_http_requests_total", route="/api/v2/jobs", code="202") == 1
    polls = sample(
        found, "joblot_http_requests_total", route="/api/v2/job_statuses/{id}", code="200"
    )
    assert polls >= 1
    assert sample(found, "joblot_http_request_duration_seconds_count", route="/metrics") == 1
    assert (
        "joblot_http_requests_total",
        frozenset({("route", "/api/v2/jobs"), ("code", "202")}),
    ) not in scrape(other_node)


def _json_lines(text: str) -> list[dict[str, Any]]:
    docs = []
    for line in text.splitlines():
        if line.strip():
            doc = orjson.loads(line)  # every line, whoever wrote it, is one JSON object
            assert isinstance(doc, dict), line
            docs.append(doc)
    return docs


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_json_logs_are_one_object_a_line_with_every_job_event(
    start_server: Any, joblot_env: dict[str, str]
) -> None:
    joblot_env["JOBLOT_LOG_FORMAT"] = "json"
    server = start_server(workers=1)
    done = server.submit("demo.echo", [{"id": 1}, {"id": 2, "fail": "bad row"}])
    server.wait(done["id"])
    slow = server.submit("demo.sleep", [{"id": i, "seconds": 0.05} for i in range(400)])
    server.wait(slow["id"], until=("working",))
    (worker,) = _children(server.proc.pid)
    os.kill(worker, signal.SIGKILL)  # its lease lapses: the worker is lost, and replaced
    deadline = time.monotonic() + 30
    while "worker_lost" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.2)
    server.http.post(f"/api/v2/job_statuses/{slow['id']}/cancel")
    server.stop()
    docs = _json_lines(server.log.read_text())
    assert any(d["logger"] == "uvicorn.error" and "startup complete" in d["message"] for d in docs)

    def events(job_id: str) -> dict[str, dict[str, Any]]:
        return {d["event"]: d for d in docs if d.get("job_id") == job_id and "event" in d}

    finished = events(done["id"])
    assert set(finished) == {"submitted", "started", "finished"}
    for doc in finished.values():
        assert (doc["job_type"], doc["tenant"]) == ("demo.echo", "default")
        assert done["id"] in doc["message"]
    assert finished["finished"]["status"] == "completed"
    assert {"submitted", "started", "worker_lost", "cancelled"} <= set(events(slow["id"]))
    assert events(slow["id"])["worker_lost"]["level"] == "warning"


def test_an_error_with_a_traceback_is_one_json_line(
    joblot_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "broken_jobs.py").write_text("raise RuntimeError('this app cannot load')\n")
    env = {**joblot_env, "PYTHONPATH": str(tmp_path)}
    db = f"sqlite:///{tmp_path}/joblot.db"
    migrated = subprocess.run([JOBLOT, "migrate", "--db", db], env=env, check=False, timeout=60)
    assert migrated.returncode == 0
    result = subprocess.run(
        [JOBLOT, "worker", "--db", db, "--app", "broken_jobs:app", "--log-format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    (doc,) = _json_lines(result.stderr)
    assert doc["level"] == "critical"
    assert doc["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: this app cannot load" in doc["exception"]
