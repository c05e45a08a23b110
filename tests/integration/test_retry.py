"""Retrying the failed items of a finished job: `POST /job_statuses/{id}/retry`, the client's
`retry()`, over the real app in-process, on SQLite."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from joblot.app import App, Context, ItemFailed
from joblot.client import AsyncClient
from joblot.errors import ClientError
from joblot.store import FinishedItem

from .harness import Harness, harness

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Flaky:
    """A job type whose items fail while their `id` is in `failing`, and that records every
    item it was handed, exactly as it arrived."""

    def __init__(self, failing: set[Any]) -> None:
        self.failing = failing
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.app = App()
        self.app.job_type("crm.sync", action="update")(self.handle)

    def handle(self, item: dict[str, Any], ctx: Context) -> dict[str, Any]:
        with self.lock:
            self.seen.append(dict(item))
        if item["id"] in self.failing:
            raise ItemFailed("the CRM said no", error="Rejected")
        return {"status": "Synced"}


ITEMS: list[dict[str, Any]] = [
    {"id": 0, "name": "zero"},
    {"id": 1, "name": "one", "nested": {"deep": [1, {"x": None}]}},
    {"id": "two", "unicode": "é\u2603"},
    {"id": 3},
    {"id": 4, "name": "four"},
]


async def run_to_the_end(h: Harness, job_id: str) -> dict[str, Any]:
    if not h.workers:
        h.start_worker()
    status: dict[str, Any] = await h.wait(job_id)
    return status


async def test_retry_queues_exactly_the_failed_items_as_submitted_in_index_order(
    tmp_path: Path,
) -> None:
    flaky = Flaky({1, "two", 4})
    async with harness(tmp_path, app=flaky.app) as h:
        source = await h.submit(ITEMS, "crm.sync")
        await run_to_the_end(h, source["id"])
        flaky.failing.clear()  # the CRM is back
        flaky.seen.clear()
        response = await h.http.post(f"/api/v2/job_statuses/{source['id']}/retry")
        assert response.status_code == 202, response.text
        body = response.json()
        retry = body["job_status"]
        assert list(body) == ["job_status", "job_stats"]
        assert retry["id"] != source["id"] and retry["job_type"] == "crm.sync"
        assert (retry["status"], retry["total"], retry["message"]) == ("queued", 3, None)
        assert response.headers["Location"] == retry["url"]
        assert response.headers["Retry-After"] == "1"
        done = await h.wait(retry["id"])
        assert done["status"] == "completed" and done["progress"] == 3
        assert sorted(flaky.seen, key=str) == sorted([ITEMS[1], ITEMS[2], ITEMS[4]], key=str)
        assert [e["id"] for e in done["results"]] == [1, "two", 4]
        assert [e["index"] for e in done["results"]] == [0, 1, 2]
        assert all(e["success"] for e in done["results"])


async def test_the_retry_says_what_it_retries_once_it_starts(tmp_path: Path) -> None:
    flaky = Flaky({0})
    async with harness(tmp_path, app=flaky.app) as h:
        source = await h.submit(ITEMS, "crm.sync")
        await run_to_the_end(h, source["id"])
        for worker, _ in h.workers:
            worker.stop()
        for _, task in h.workers:
            await task
        h.workers.clear()
        retry = (await h.http.post(f"/api/v2/job_statuses/{source['id']}/retry")).json()
        job_id = retry["job_status"]["id"]
        claim = await h.service.claim_items("w", ["crm.sync"], 1)
        assert claim is not None and claim.job_id == job_id
        status = (await h.http.get(f"/api/v2/job_statuses/{job_id}")).json()["job_status"]
        assert status["status"] == "working"
        assert status["message"] == f"Retrying the 1 failed items of job {source['id']}"


async def test_retry_of_a_running_job_is_409_and_of_a_clean_one_422(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        queued = (await h.submit([{"id": 1, "fail": "x"}]))["id"]
        running = await h.http.post(f"/api/v2/job_statuses/{queued}/retry")
        assert running.status_code == 409 and running.json()["error"] == "JobNotFinished"
        clean = (await h.submit([{"id": 1}, {"id": 2}]))["id"]
        await run_to_the_end(h, clean)
        nothing = await h.http.post(f"/api/v2/job_statuses/{clean}/retry.json")
        assert nothing.status_code == 422 and nothing.json()["error"] == "NothingToRetry"
        missing = await h.http.post(f"/api/v2/job_statuses/{'0' * 32}/retry")
        assert missing.status_code == 404 and missing.json()["error"] == "RecordNotFound"
        getting = await h.http.get(f"/api/v2/job_statuses/{clean}/retry")
        assert getting.status_code == 405


async def test_a_cancelled_jobs_retry_has_its_failed_items_not_its_skipped_ones(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        job_id = (await h.submit([{"id": i, "fail": "no"} for i in range(3)]))["id"]
        claim = await h.service.claim_items("w", ["demo.echo"], 1)
        assert claim is not None
        await h.http.post(f"/api/v2/job_statuses/{job_id}/cancel")
        # the claimed item was running when the job was cancelled: its failure is recorded
        entry = b'{"index":0,"id":0,"success":false,"error":"DemoFailure","details":"no"}'
        await h.service.finish_items(
            claim.lease_id, [FinishedItem(0, False, entry)], message=None, final=True
        )
        retried = (await h.http.post(f"/api/v2/job_statuses/{job_id}/retry")).json()
        assert retried["job_status"]["total"] == 1


async def test_retry_counts_against_the_quota_and_honours_idempotency_keys(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, max_active_jobs=2) as h:
        source = (await h.submit([{"id": 1, "fail": "x"}, {"id": 2, "fail": "y"}]))["id"]
        other = (await h.submit([{"id": 3, "fail": "z"}]))["id"]
        await run_to_the_end(h, source)
        await h.wait(other)
        for worker, _ in h.workers:
            worker.stop()
        for _, task in h.workers:
            await task
        h.workers.clear()
        url = f"/api/v2/job_statuses/{source}/retry"
        first = await h.http.post(url, headers={"Idempotency-Key": "r-1"})
        again = await h.http.post(url, headers={"Idempotency-Key": "r-1"})
        assert first.status_code == again.status_code == 202
        assert again.headers["Idempotent-Replayed"] == "true"
        assert first.json()["job_status"]["id"] == again.json()["job_status"]["id"]
        reused = await h.http.post(
            f"/api/v2/job_statuses/{other}/retry", headers={"Idempotency-Key": "r-1"}
        )
        assert reused.status_code == 409 and reused.json()["error"] == "IdempotencyKeyReused"
        bad_key = await h.http.post(url, headers={"Idempotency-Key": "no spaces allowed"})
        assert bad_key.status_code == 400
        second = await h.http.post(url)
        assert second.status_code == 202  # two unfinished jobs now: the quota
        third = await h.http.post(url)
        assert third.status_code == 429 and third.json()["error"] == "TooManyJobs"
        assert third.headers["Retry-After"]


async def test_another_tenants_job_cannot_be_retried(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        acme, other = await h.tenant_headers("acme"), await h.tenant_headers("other")
        response = await h.http.post(
            "/api/v2/jobs",
            json={"job": {"job_type": "demo.echo", "items": [{"id": 1, "fail": "x"}]}},
            headers=acme,
        )
        job_id = response.json()["job_status"]["id"]
        h.start_worker()
        await h.wait(job_id, headers=acme)
        foreign = await h.http.post(f"/api/v2/job_statuses/{job_id}/retry", headers=other)
        assert foreign.status_code == 404 and foreign.json()["error"] == "RecordNotFound"
        anonymous = await h.http.post(f"/api/v2/job_statuses/{job_id}/retry")
        assert anonymous.status_code == 401
        mine = await h.http.post(f"/api/v2/job_statuses/{job_id}/retry", headers=acme)
        assert mine.status_code == 202


async def test_client_retry(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        source = (await h.submit([{"id": 1}, {"id": 2, "fail": "again"}]))["id"]
        await run_to_the_end(h, source)
        async with AsyncClient("http://joblot.test", transport=h.http._transport) as client:
            retried = await client.retry(source, idempotency_key="k")
            assert retried.total == 1 and retried.job_type == "demo.echo"
            assert (await client.retry(source, idempotency_key="k")).id == retried.id
            final = await client.wait(retried.id, timeout=20)
            assert final.results == [
                {"index": 0, "id": 2, "action": "echo", "success": False,
                 "error": "DemoFailure", "details": "again"}
            ]  # fmt: skip
            clean = await client.submit("demo.echo", [{"id": 9}])
            await client.wait(clean.id, timeout=20)
            with pytest.raises(ClientError, match="NothingToRetry"):
                await client.retry(clean.id)
