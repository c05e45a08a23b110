"""`job_stats` beside every JobStatus, and job listings filtered by status and type, over the
real app in-process (httpx ASGITransport), on SQLite."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from joblot.client import AsyncClient
from joblot.models import Status

from .harness import Harness, harness

pytestmark = pytest.mark.anyio
KEYS = ["id", "job_type", "url", "total", "progress", "status", "message", "results"]
STATS = ["failures", "created_at", "started_at", "updated_at", "finished_at"]
RFC3339_MILLIS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_stats(stats: dict[str, Any], *, failures: int, started: bool, finished: bool) -> None:
    assert list(stats) == STATS
    assert stats["failures"] == failures
    for key in STATS[1:]:
        value = stats[key]
        present = {"started_at": started, "finished_at": finished}.get(key, True)
        assert (value is not None) == present, (key, stats)
        assert value is None or RFC3339_MILLIS.fullmatch(value), value


async def test_every_body_with_one_status_carries_its_stats_beside_it(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        items = [{"id": i, **({"fail": "bad"} if i % 3 == 0 else {})} for i in range(7)]
        submitted = await h.http.post(
            "/api/v2/jobs", json={"job": {"job_type": "demo.echo", "items": items}}
        )
        body = submitted.json()
        assert list(body) == ["job_status", "job_stats"]
        assert list(body["job_status"]) == KEYS
        assert_stats(body["job_stats"], failures=0, started=False, finished=False)
        assert body["job_stats"]["created_at"] == body["job_stats"]["updated_at"]
        job_id = body["job_status"]["id"]
        h.start_worker()
        await h.wait(job_id)
        read = (await h.http.get(f"/api/v2/job_statuses/{job_id}.json")).json()
        assert list(read) == ["job_status", "job_stats"] and list(read["job_status"]) == KEYS
        assert_stats(read["job_stats"], failures=3, started=True, finished=True)
        stats = read["job_stats"]
        assert stats["created_at"] <= stats["started_at"] <= stats["finished_at"]
        assert stats["updated_at"] == stats["finished_at"]


async def test_cancel_answers_with_the_stats_of_the_cancelled_job(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = (await h.submit([{"id": 1}]))["id"]
        body = (await h.http.post(f"/api/v2/job_statuses/{job_id}/cancel")).json()
        assert list(body) == ["job_status", "job_stats"]
        assert_stats(body["job_stats"], failures=0, started=False, finished=True)


async def test_the_event_stream_carries_stats_in_each_event(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = (await h.submit([{"id": 1, "fail": "no"}]))["id"]
        h.start_worker()
        await h.wait(job_id)
        response = await h.http.get(f"/api/v2/job_statuses/{job_id}/events")
        data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        last = orjson.loads(data[-1])
        assert list(last) == ["job_status", "job_stats"]
        assert_stats(last["job_stats"], failures=1, started=True, finished=True)


async def test_lists_carry_stats_by_job_id(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        a = (await h.submit([{"id": 1}]))["id"]
        b = (await h.submit([{"id": 1}]))["id"]
        listed = (await h.http.get("/api/v2/job_statuses")).json()
        assert list(listed) == ["job_statuses", "job_stats", "meta", "links"]
        assert set(listed["job_stats"]) == {a, b}
        many = (await h.http.get(f"/api/v2/job_statuses/show_many?ids={a},{b}")).json()
        assert list(many) == ["job_statuses", "job_stats"]
        assert set(many["job_stats"]) == {a, b}
        for stats in [*listed["job_stats"].values(), *many["job_stats"].values()]:
            assert_stats(stats, failures=0, started=False, finished=False)


async def _jobs_of_every_kind(h: Harness) -> dict[str, str]:
    """A completed demo.echo job, a cancelled one (failed), and two queued, one a demo.sleep."""
    ids = {"completed": (await h.submit([{"id": 1}]))["id"]}
    h.start_worker()
    await h.wait(ids["completed"])
    for worker, _ in h.workers:
        worker.stop()
    for _, task in h.workers:
        await task
    h.workers.clear()
    ids["failed"] = (await h.submit([{"id": 1}]))["id"]
    await h.http.post(f"/api/v2/job_statuses/{ids['failed']}/cancel")
    ids["queued"] = (await h.submit([{"id": 1}]))["id"]
    ids["sleep"] = (await h.submit([{"id": 1}], job_type="demo.sleep"))["id"]
    return ids


def _filters(query: str) -> dict[str, set[str]]:
    """The filters of a query string, each as the set of values it names."""
    found = parse_qs(query.replace("%2C", ","))
    return {k: set(v[0].split(",")) for k, v in found.items() if not k.startswith("page")}


async def test_list_filters_by_status_and_type_and_the_links_keep_the_filters(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        ids = await _jobs_of_every_kind(h)

        async def listed(query: str) -> list[str]:
            found, url = [], f"/api/v2/job_statuses?page[size]=1&{query}"
            while url:
                body = (await h.http.get(url)).json()
                found += [s["id"] for s in body["job_statuses"]]
                assert set(body["job_stats"]) == {s["id"] for s in body["job_statuses"]}
                url = body["links"]["next"]
                if url:
                    assert _filters(urlsplit(url).query) == _filters(query)
            return found

        assert await listed("status=queued") == [ids["sleep"], ids["queued"]]
        assert await listed("status=completed,failed") == [ids["failed"], ids["completed"]]
        assert await listed("status=failed%2Ccompleted") == [ids["failed"], ids["completed"]]
        assert await listed("job_type=demo.sleep") == [ids["sleep"]]
        assert await listed("status=queued&job_type=demo.echo") == [ids["queued"]]
        assert await listed("job_type=demo.echo") == [
            ids["queued"],
            ids["failed"],
            ids["completed"],
        ]
        assert await listed("status=working") == []


@pytest.mark.parametrize(
    "query",
    [
        "status=",
        "status=done",
        "status=queued,nope",
        "status=,",
        "job_type=",
        f"job_type={'x' * 201}",
    ],
)
async def test_bad_list_filters_get_400(tmp_path: Path, query: str) -> None:
    async with harness(tmp_path) as h:
        response = await h.http.get(f"/api/v2/job_statuses?{query}")
        assert response.status_code == 400
        assert response.json()["error"] == "InvalidParameter"


async def test_client_lists_filtered_reports_and_reads_one(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        ids = await _jobs_of_every_kind(h)
        async with AsyncClient("http://joblot.test", transport=h.http._transport) as client:
            queued = [s.id async for s in client.list(status="queued", page_size=1)]
            assert queued == [ids["sleep"], ids["queued"]]
            finished = [r async for r in client.reports(status=[Status.FAILED, "completed"])]
            assert [r.job_status.id for r in finished] == [ids["failed"], ids["completed"]]
            assert all(r.job_stats is not None for r in finished)
            typed = [s.id async for s in client.list(job_type="demo.sleep")]
            assert typed == [ids["sleep"]]
            report = await client.report(ids["completed"])
            assert report.job_status.status is Status.COMPLETED
            assert report.job_stats is not None and report.job_stats.failures == 0
            assert report.job_stats.finished_at is not None
