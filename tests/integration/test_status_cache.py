"""Statuses answered from memory are never older than the last committed change: each change
is visible to the very next read, on SQLite and on PostgreSQL, and a kept status is scoped,
authenticated and counted like any other read."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from joblot.api import create_app
from joblot.auth import CACHE_SECONDS, mint_token
from joblot.config import Settings
from joblot.demo import app as demo_app
from joblot.service import Service
from joblot.store import Claim, FinishedItem, Store

from .conftest import Backend
from .harness import SteppedClock

pytestmark = pytest.mark.anyio
RETENTION = 60.0
STATUSES = "/api/v2/job_statuses"


class WallClock:
    """`time.time()` plus however far a test stepped it forward."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.time() + self.skipped


class Api:
    """The HTTP app over a store, with a worker's part played by hand."""

    def __init__(self, service: Service, http: httpx.AsyncClient, auth_clock: SteppedClock):
        self.service, self.http, self.auth_clock = service, http, auth_clock

    async def submit(self, items: int, headers: dict[str, str] | None = None) -> str:
        body = {"job": {"job_type": "demo.echo", "items": [{"id": i} for i in range(items)]}}
        answer = await self.http.post("/api/v2/jobs", json=body, headers=headers)
        assert answer.status_code == 202, answer.text
        job_id: str = answer.json()["job_status"]["id"]
        return job_id

    async def claim(self, limit: int) -> Claim:
        claim = await self.service.claim_items("worker-1", ["demo.echo"], limit)
        assert claim is not None
        return claim

    async def finish(self, claim: Claim) -> None:
        items = [
            FinishedItem(i.index, True, orjson.dumps({"index": i.index, "success": True}))
            for i in claim.items
        ]
        outcome = await self.service.finish_items(claim.lease_id, items, message=None, final=True)
        assert outcome.accepted

    async def read(self, job_id: str, **headers: str) -> httpx.Response:
        """GET the status; `if_none_match="..."` sends `If-None-Match`."""
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        return await self.http.get(f"{STATUSES}/{job_id}.json", headers=sent)

    async def status(self, job_id: str, **headers: str) -> Any:
        answer = await self.read(job_id, **headers)
        assert answer.status_code == 200, answer.text
        return answer.json()["job_status"]


@asynccontextmanager
async def api(store: Store, backend: Backend, clock: WallClock) -> AsyncIterator[Api]:
    settings = Settings(database_url=backend.url, retention_seconds=RETENTION)
    service = Service(store, demo_app, settings, clock=clock)
    auth_clock = SteppedClock()
    transport = httpx.ASGITransport(app=create_app(service, auth_clock=auth_clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://joblot.test") as http:
        yield Api(service, http, auth_clock)


async def test_each_change_is_visible_to_the_very_next_read(store: Store, backend: Backend) -> None:
    async with api(store, backend, WallClock()) as a:
        job_id = await a.submit(2)
        assert (await a.status(job_id))["status"] == "queued"
        first = await a.claim(1)
        working = await a.read(job_id)
        assert working.json()["job_status"]["status"] == "working"
        tag = working.headers["etag"]
        assert (await a.read(job_id, if_none_match=tag)).status_code == 304
        await a.finish(first)
        changed = await a.read(job_id, if_none_match=tag)
        assert changed.status_code == 200 and changed.json()["job_status"]["progress"] == 1
        await a.finish(await a.claim(1))
        done = [await a.status(job_id) for _ in range(3)]  # the first read keeps it
        assert done[0]["status"] == "completed" and len(done[0]["results"]) == 2
        assert done[1] == done[2] == done[0]
        tag = (await a.read(job_id)).headers["etag"]
        unchanged = await a.read(job_id, if_none_match=f"W/{tag}")
        assert unchanged.status_code == 304 and unchanged.headers["etag"] == tag
        assert (await a.read(job_id, if_none_match='"other"')).status_code == 200


async def test_a_stopped_job_takes_the_results_of_items_still_running(
    store: Store, backend: Backend
) -> None:
    async with api(store, backend, WallClock()) as a:
        job_id = await a.submit(3)
        running = await a.claim(1)
        cancelled = await a.http.post(f"{STATUSES}/{job_id}/cancel")
        assert cancelled.status_code == 200
        before = await a.status(job_id)
        assert (before["status"], before["progress"]) == ("failed", 0)
        await a.finish(running)  # a result that arrives after the cancel still counts
        after = await a.status(job_id)
        assert (after["status"], after["progress"]) == ("failed", 1)
        assert [r["index"] for r in after["results"]] == [0]


async def test_a_kept_status_is_gone_when_its_job_expires(store: Store, backend: Backend) -> None:
    clock = WallClock()
    async with api(store, backend, clock) as a:
        job_id = await a.submit(1)
        await a.finish(await a.claim(1))
        assert (await a.status(job_id))["status"] == "completed"
        assert (await a.read(job_id)).status_code == 200
        clock.skipped = RETENTION + 1
        gone = await a.read(job_id)
        assert gone.status_code == 404 and gone.json()["error"] == "RecordNotFound"
        assert await a.service.purge_expired() == 1
        assert (await a.read(job_id)).status_code == 404


async def _token(service: Service, tenant: str) -> tuple[str, dict[str, str]]:
    minted = mint_token()
    await service.store.create_token(minted.token_id, tenant, minted.digest, time.time())
    return minted.token_id, {"Authorization": f"Bearer {minted.secret}"}


async def test_a_kept_status_is_read_only_by_its_tenant_while_the_token_lives(
    store: Store, backend: Backend
) -> None:
    async with api(store, backend, WallClock()) as a:
        token_id, acme = await _token(a.service, "acme")
        _, other = await _token(a.service, "other")
        job_id = await a.submit(1, headers=acme)
        await a.finish(await a.claim(1))
        assert (await a.status(job_id, **acme))["status"] == "completed"
        assert (await a.status(job_id, **acme))["status"] == "completed"
        foreign = await a.read(job_id, **other)
        assert foreign.status_code == 404 and foreign.json()["error"] == "RecordNotFound"
        assert (await a.read(job_id)).status_code == 401
        assert await a.service.store.revoke_token(token_id, time.time())
        a.auth_clock.advance(CACHE_SECONDS)  # the revocation bound of docs/security.md
        assert (await a.read(job_id, **acme)).status_code == 401


async def test_a_kept_status_has_the_url_of_the_host_asked(store: Store, backend: Backend) -> None:
    async with api(store, backend, WallClock()) as a:
        job_id = await a.submit(1)
        await a.finish(await a.claim(1))
        for host in ("a.example", "b.example", "a.example"):
            status = await a.status(job_id, host=host)
            assert status["url"] == f"http://{host}{STATUSES}/{job_id}.json"


async def test_reads_answered_from_memory_are_counted(store: Store, backend: Backend) -> None:
    async with api(store, backend, WallClock()) as a:
        job_id = await a.submit(1)
        await a.finish(await a.claim(1))
        for _ in range(3):
            await a.read(job_id)
        tag = (await a.read(job_id)).headers["etag"]
        await a.read(job_id, if_none_match=tag)
        text = (await a.http.get("/metrics")).text
        route = f'route="{STATUSES}/{{id}}"'
        assert f'joblot_http_requests_total{{{route},code="200"}} 4' in text
        assert f'joblot_http_requests_total{{{route},code="304"}} 1' in text
