"""`/livez` and `/readyz`, in-process on both backends: alive whatever the database says; ready
only once the database answers with this joblot's schema."""

from __future__ import annotations

import httpx
import pytest

from joblot.api import create_app
from joblot.config import Settings
from joblot.demo import app as demo_app
from joblot.service import Service

from .conftest import Backend

pytestmark = pytest.mark.anyio


async def test_ready_only_once_migrated_and_alive_all_along(backend: Backend) -> None:
    store = backend.open()
    service = Service(store, demo_app, Settings(database_url=backend.url))
    transport = httpx.ASGITransport(app=create_app(service))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://joblot.test") as http:
            live = await http.get("/livez")
            assert live.status_code == 200 and live.json() == {"status": "ok"}
            unready = await http.get("/readyz")
            assert unready.status_code == 503, unready.text
            assert unready.json()["error"] == "SchemaOutOfDate"
            assert "joblot migrate" in unready.json()["description"]
            assert unready.headers["Retry-After"].isdigit()
            await store.migrate()
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ok"
            assert ready.json()["schema"] == ready.json()["latest_schema"]
    finally:
        await store.close()
