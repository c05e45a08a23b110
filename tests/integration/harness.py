"""A joblot service on a fresh SQLite file with its HTTP app in-process, for API tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from joblot.api import create_app
from joblot.app import App
from joblot.auth import mint_token
from joblot.config import Settings
from joblot.demo import app as demo_app
from joblot.service import Service
from joblot.store import open_store
from joblot.worker import Worker


class SteppedClock:
    """`time.monotonic()` plus however far a test stepped it forward (instead of sleeping)."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass at once."""
        self.skipped += seconds


class Harness:
    """A service on a fresh SQLite file, its HTTP app, and workers started on demand."""

    def __init__(self, service: Service, http: httpx.AsyncClient, clock: SteppedClock) -> None:
        self.service = service
        self.http = http
        self.clock = clock  # the API's auth clock: token caches and rate limits
        self.workers: list[tuple[Worker, asyncio.Task[None]]] = []

    def start_worker(self) -> None:
        worker = Worker(self.service, self.service.app)
        self.workers.append((worker, asyncio.create_task(worker.run())))

    async def submit(self, items: list[dict[str, Any]], job_type: str = "demo.echo") -> Any:
        response = await self.http.post(
            "/api/v2/jobs", json={"job": {"job_type": job_type, "items": items}}
        )
        assert response.status_code == 202, response.text
        return response.json()["job_status"]

    async def tenant_headers(self, tenant: str) -> dict[str, str]:
        """The Authorization header of a new token of `tenant` (once a token exists, requests
        without one get 401)."""
        minted = mint_token()
        await self.service.store.create_token(minted.token_id, tenant, minted.digest, time.time())
        return {"Authorization": f"Bearer {minted.secret}"}

    async def wait(
        self, job_id: str, timeout: float = 20, headers: dict[str, str] | None = None
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = await self.http.get(f"/api/v2/job_statuses/{job_id}", headers=headers)
            status = response.json()["job_status"]
            if status["status"] in ("completed", "failed"):
                return status
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s")


@asynccontextmanager
async def harness(tmp_path: Path, app: App = demo_app, **settings: Any) -> AsyncIterator[Harness]:
    config = Settings(database_url=f"sqlite:///{tmp_path}/api.db", lease_seconds=1, **settings)
    store = open_store(config.database_url)
    await store.migrate()
    service = Service(store, app, config)
    clock = SteppedClock()
    transport = httpx.ASGITransport(app=create_app(service, auth_clock=clock))
    async with httpx.AsyncClient(transport=transport, base_url="http://joblot.test") as http:
        h = Harness(service, http, clock)
        try:
            yield h
        finally:
            for worker, _ in h.workers:
                worker.stop()
            await asyncio.gather(*(task for _, task in h.workers))
            await store.close()
