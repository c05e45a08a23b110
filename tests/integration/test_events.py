"""The Server-Sent Events stream of a job's status changes, against the real app in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .harness import harness

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def parse_events(text: str) -> list[dict[str, Any]]:
    """The events of an event-stream body, each as its fields (data decoded as JSON)."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


async def test_the_stream_sends_each_change_and_ends_with_the_finished_status(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        job = await h.submit([{"id": i, "seconds": 0.2} for i in range(12)], "demo.sleep")
        h.start_worker()
        response = await h.http.get(f"/api/v2/job_statuses/{job['id']}/events")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.text.startswith("retry: ")
        events = parse_events(response.text)
        statuses = [e["data"]["job_status"] for e in events]
        assert [e["event"] for e in events] == ["job_status"] * len(events)
        # the worker may claim before the stream's first read
        assert statuses[0]["status"] in ("queued", "working")
        assert statuses[-1]["status"] == "completed"
        assert len(statuses) >= 3, "progress in between is streamed too"
        versions = [int(e["id"]) for e in events]
        assert versions == sorted(set(versions))
        progress = [s["progress"] or 0 for s in statuses]
        assert progress == sorted(progress) and progress[-1] == 12
        final = (await h.http.get(f"/api/v2/job_statuses/{job['id']}")).headers["ETag"]
        assert final == f'"{job["id"]}.{versions[-1]}"', "event ids are the ETag versions"


async def test_resuming_with_last_event_id_skips_what_was_seen(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job = await h.submit([{"id": 1}])
        h.start_worker()
        await h.wait(job["id"])
        url = f"/api/v2/job_statuses/{job['id']}/events"
        first = parse_events((await h.http.get(url)).text)
        assert len(first) == 1 and first[0]["data"]["job_status"]["status"] == "completed"
        again = await h.http.get(url, headers={"Last-Event-ID": first[0]["id"]})
        assert parse_events(again.text) == []


async def test_the_stream_of_an_unknown_or_foreign_job_is_a_json_404(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        for job_id in ("0" * 32, "nope"):
            response = await h.http.get(f"/api/v2/job_statuses/{job_id}/events")
            assert response.status_code == 404
            assert response.json()["error"] == "RecordNotFound"
