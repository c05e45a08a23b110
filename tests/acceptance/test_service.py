"""`joblot serve` and `joblot worker` as real processes, over real HTTP, on SQLite."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .conftest import JOBLOT


def test_a_job_with_failing_items_completes_with_per_item_results(start_server: Any) -> None:
    server = start_server(workers=1)
    queued = server.submit("demo.echo", [{"id": 1}, {"id": 2, "fail": "bad row"}, {}])
    assert queued["status"] == "queued" and queued["progress"] is None
    assert queued["url"] == f"{server.url}/api/v2/job_statuses/{queued['id']}.json"
    final = server.wait(queued["id"])
    assert final["status"] == "completed"
    assert (final["total"], final["progress"]) == (3, 3)
    assert final["message"].startswith("Completed at ")
    assert final["results"] == [
        {"index": 0, "id": 1, "action": "echo", "status": "Echoed", "success": True},
        {
            "index": 1,
            "id": 2,
            "action": "echo",
            "success": False,
            "error": "DemoFailure",
            "details": "bad row",
        },
        {"index": 2, "action": "echo", "status": "Echoed", "success": True},
    ]


def _skipped(message: str, total: int) -> int:
    match = re.fullmatch(rf"Cancelled: (\d+) of {total} items were skipped", message)
    assert match, message
    return int(match[1])


def test_cancel_stops_a_running_job_and_counts_the_skipped_items(start_server: Any) -> None:
    server = start_server(workers=1)
    job = server.submit("demo.sleep", [{"id": i, "seconds": 0.1} for i in range(200)])
    server.wait(job["id"], until=("working",))
    time.sleep(0.3)
    response = server.http.post(f"/api/v2/job_statuses/{job['id']}/cancel.json")
    assert response.status_code == 200, response.text
    cancelled = response.json()["job_status"]
    assert cancelled["status"] == "failed"
    assert 0 < _skipped(cancelled["message"], 200) < 200
    # Items running at the cancel still report; items claimed but not started are handed
    # back and counted as skipped. Within a lease length everything has settled.
    time.sleep(1.5)
    settled = server.status(job["id"])
    time.sleep(0.5)
    assert server.status(job["id"]) == settled, "a cancelled job kept running"
    assert settled["status"] == "failed"
    assert settled["progress"] + _skipped(settled["message"], 200) == 200
    # at most the 4 items that had ended but were not reported yet (a report every 0.1 s, as
    # long as one item here), the 4 then running, and 4 more started before the worker heard
    # of the cancel at its next report
    assert settled["progress"] - cancelled["progress"] <= 12
    assert len(server.all_results(job["id"])) == settled["progress"]
    again = server.http.post(f"/api/v2/job_statuses/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"] == "JobFinished"


def test_idempotent_resubmit_returns_the_same_job(start_server: Any) -> None:
    server = start_server(workers=0)
    items = [{"id": 1}, {"id": 2}]
    first = server.submit("demo.echo", items, **{"Idempotency-Key": "order-42"})
    body = {"job": {"job_type": "demo.echo", "items": items}}
    retry = server.http.post("/api/v2/jobs", json=body, headers={"Idempotency-Key": "order-42"})
    assert retry.status_code == 202
    assert retry.json()["job_status"]["id"] == first["id"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    other = server.http.post(
        "/api/v2/jobs",
        headers={"Idempotency-Key": "order-42"},
        json={"job": {"job_type": "demo.echo", "items": [{"id": 3}]}},
    )
    assert other.status_code == 409 and other.json()["error"] == "IdempotencyKeyReused"
    listed = server.http.get("/api/v2/job_statuses.json").json()["job_statuses"]
    assert [j["id"] for j in listed] == [first["id"]]


def test_pagination_walks_every_job_once_forward_and_back(start_server: Any) -> None:
    server = start_server(workers=1)
    finished = [server.submit("demo.echo", [{"id": i}])["id"] for i in range(6)]
    for job_id in finished:
        server.wait(job_id)
    server.stop()
    server = start_server(workers=0)  # the rest stay queued
    queued = [server.submit("demo.echo", [{"id": i}])["id"] for i in range(7)]
    pages, url = [], "/api/v2/job_statuses.json?page[size]=4"
    while url:
        body = server.http.get(url).json()
        assert body["meta"]["has_more"] == (body["links"]["next"] is not None)
        pages.append([j["id"] for j in body["job_statuses"]])
        url = body["links"]["next"]
    walked = [job_id for page in pages for job_id in page]
    assert [len(p) for p in pages] == [4, 4, 4, 1]
    # unfinished first (newest first), then finished ones by completion time, newest first
    assert walked == list(reversed(queued)) + list(reversed(finished))
    back: list[str] = []
    url = body["links"]["prev"]
    while url:
        body = server.http.get(url).json()
        back = [j["id"] for j in body["job_statuses"]] + back
        url = body["links"]["prev"]
    assert back == walked[:-1]


def test_a_killed_worker_loses_nothing_and_counts_nothing_twice(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(workers=0)
    env = {**joblot_env, "JOBLOT_DATABASE_URL": server.db}

    def worker(name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                [JOBLOT, "worker", "--concurrency", "8"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    job = server.submit("demo.sleep", [{"id": i, "seconds": 0.004} for i in range(3000)])
    first = worker("first")
    deadline = time.monotonic() + 60
    while (server.status(job["id"])["progress"] or 0) < 600:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    at_kill = server.status(job["id"])
    assert at_kill["status"] == "working" and at_kill["progress"] < 3000
    second = worker("second")
    try:
        final = server.wait(job["id"], timeout=120)
    finally:
        second.terminate()
        second.wait(30)
    assert final["status"] == "completed" and final["progress"] == final["total"] == 3000
    entries = server.all_results(job["id"])
    assert sorted(e["index"] for e in entries) == list(range(3000))
    assert all(e["success"] and e["id"] == e["index"] for e in entries)
    # whichever process led the cluster's maintenance (serve or the second worker) requeued
    logs = (tmp_path / "second.log").read_text() + server.log.read_text()
    assert "of lapsed leases to the queue" in logs


def test_a_small_job_finishes_promptly_while_a_big_one_runs(start_server: Any) -> None:
    server = start_server(workers=1)
    big = server.submit("demo.sleep", [{"id": i, "seconds": 0.01} for i in range(3000)])
    server.wait(big["id"], until=("working",))
    started = time.monotonic()
    small = server.submit("demo.echo", [{"id": i} for i in range(10)])
    done = server.wait(small["id"], timeout=30)
    took = time.monotonic() - started
    assert done["status"] == "completed"
    big_now = server.status(big["id"])
    assert big_now["status"] == "working", "the small job should not wait for the big one"
    assert took < big_now["total"] * 0.01 / 4, f"small job took {took:.2f} s"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [
            p
            for p in pids
            if Path(f"/proc/{p}").exists()
            and "(Z)" not in Path(f"/proc/{p}/stat").read_text().replace(" Z ", "(Z)")
        ]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def test_workers_of_a_killed_serve_do_not_outlive_it(start_server: Any) -> None:
    server = start_server(workers=2)
    workers = _children(server.proc.pid)
    assert len(workers) == 2
    server.proc.kill()  # SIGKILL: serve cannot stop them itself
    server.proc.wait()
    assert _wait_gone(workers, 15) == [], "worker processes outlived serve"


def test_ctrl_c_to_the_process_group_stops_serve_and_workers(start_server: Any) -> None:
    server = start_server(workers=2)
    workers = _children(server.proc.pid)
    os.killpg(server.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert server.proc.wait(30) == 130  # the shell's code for an interrupted command
    time.sleep(1.5)  # longer than the pool's watch interval: nothing may be respawned
    assert _wait_gone(workers, 5) == []
    assert _children(server.proc.pid) == []


def test_status_changes_stream_as_server_sent_events(start_server: Any) -> None:
    server = start_server(workers=1)
    job = server.submit("demo.sleep", [{"id": i, "seconds": 0.1} for i in range(20)])
    seen: list[dict[str, Any]] = []
    first_at: float | None = None
    with server.http.stream("GET", f"/api/v2/job_statuses/{job['id']}/events") as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[len("data: ") :])["job_status"])
                first_at = first_at or time.monotonic()
    ended_at = time.monotonic()
    assert seen[0]["status"] in ("queued", "working") and seen[-1]["status"] == "completed"
    assert first_at is not None and ended_at - first_at > 0.2, (
        "events arrive as the job runs, not all at the end"
    )
    assert [s["progress"] or 0 for s in seen] == sorted(s["progress"] or 0 for s in seen)
