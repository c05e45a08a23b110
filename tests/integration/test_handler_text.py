"""Whatever text a handler reports (messages, results, errors, details; NUL and lone surrogates
included), its job ends, on SQLite and on PostgreSQL, and the text is stored by one rule."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from joblot.app import App, Context, ItemFailed
from joblot.codec import storable_text, without_surrogates
from joblot.config import Settings
from joblot.service import Service
from joblot.store import Store
from joblot.worker import Worker

pytestmark = pytest.mark.anyio

HOW = ["return", "return-key", "fail", "raise", "message-only"]


def text_of(code_points: list[int]) -> str:
    """The handler's text: code points straight from the item, surrogates and NUL included."""
    return "".join(map(chr, code_points))


def unicode_app() -> App:
    """One job type whose handler reports its item's text in every way a handler can."""
    app = App()

    @app.job_type("test.unicode", action="echo")
    def report(item: dict[str, Any], ctx: Context) -> dict[str, Any] | None:
        text = text_of(item["cp"])
        ctx.message(text)
        how = item["how"]
        if how == "fail":
            raise ItemFailed(text, error=text)
        if how == "raise":
            raise ValueError(text)
        if how == "return-key":
            return {text: text}
        return {"text": text} if how == "return" else None

    return app


@pytest.fixture
async def service(store: Store) -> AsyncIterator[Service]:
    """A service on the test's database with one worker running the unicode job type."""
    app = unicode_app()
    service = Service(store, app, Settings(lease_seconds=5.0, concurrency=2))
    worker = Worker(service, app)
    task = asyncio.create_task(worker.run())
    yield service
    worker.stop()
    await task


code_points = st.lists(
    st.sampled_from([0, 0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xFFFD, 0x10FFFF, 0x41])
    | st.integers(0, 0x10FFFF),
    max_size=12,
)
items = st.lists(
    st.fixed_dictionaries({"cp": code_points, "how": st.sampled_from(HOW)}),
    min_size=1,
    max_size=6,
)


async def finished(service: Service, job_id: str, timeout: float = 20.0) -> Any:
    """The job once it has finished; fails the test if it is still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await service.get_job("default", job_id)
        if row.status.finished:
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} was still {row.status} after {timeout} s")


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batch=items)
async def test_any_text_a_handler_reports_is_stored_and_its_job_ends(
    service: Service, batch: list[dict[str, Any]]
) -> None:
    row, _ = await service.submit_job(
        "default", {"job": {"job_type": "test.unicode", "items": batch}}
    )
    final = await finished(service, row.id)
    assert (final.status.value, final.progress) == ("completed", len(batch))
    texts = [text_of(item["cp"]) for item in batch]
    assert final.message in {storable_text(t) for t in texts}
    assert final.results is not None
    for item, text, raw in zip(batch, texts, final.results, strict=True):
        entry = orjson.loads(raw)
        kept = without_surrogates(text)  # JSON keeps NUL; only lone surrogates are replaced
        if item["how"] == "return":
            assert entry["success"] and entry["text"] == kept
        elif item["how"] == "return-key":
            assert entry["success"] and kept in entry
        elif item["how"] == "fail":
            assert (entry["success"], entry["error"], entry["details"]) == (False, kept, kept)
        elif item["how"] == "raise":
            assert (entry["success"], entry["error"]) == (False, "ValueError")
            assert entry["details"] == (kept or "ValueError")
        else:
            assert entry["success"] is True


async def test_a_nul_in_a_message_is_stored_as_the_replacement_character(
    service: Service,
) -> None:
    job = {"job": {"job_type": "test.unicode", "items": [{"cp": [97, 0, 98], "how": "return"}]}}
    row, _ = await service.submit_job("default", job)
    final = await finished(service, row.id)
    assert final.status.value == "completed"
    assert final.message == "a\ufffdb"
    assert final.results is not None
    assert orjson.loads(final.results[0])["text"] == "a\x00b"


class RefusingStore:
    """A real store, except that it refuses (as a database refuses a value it cannot hold)
    any batch of results or message that carries the marker `REFUSE`."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def finish_items(self, lease_id: int, items: list[Any], **kwargs: Any) -> Any:
        message = kwargs["message"]
        if (message and "REFUSE" in message) or any(b"REFUSE" in it.entry for it in items):
            raise RuntimeError("value too long for type character varying(10)")
        return await self.inner.finish_items(lease_id, items, **kwargs)


async def test_results_the_database_refuses_fail_alone_and_the_job_completes(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    app = unicode_app()
    refusing: Any = RefusingStore(store)
    service = Service(refusing, app, Settings(lease_seconds=5.0, concurrency=1))
    worker = Worker(service, app)
    task = asyncio.create_task(worker.run())
    try:
        batch = [
            {"id": 0, "cp": [65], "how": "return"},
            {"id": 1, "cp": list(b"REFUSE"), "how": "return"},  # its result is refused
            {"id": 2, "cp": [66], "how": "return"},
        ]
        row, _ = await service.submit_job(
            "default", {"job": {"job_type": "test.unicode", "items": batch}}
        )
        final = await finished(service, row.id)
    finally:
        worker.stop()
        await task
    assert (final.status.value, final.progress) == ("completed", 3)
    assert final.results is not None
    entries = [orjson.loads(raw) for raw in final.results]
    assert [e["success"] for e in entries] == [True, False, True]
    assert (entries[1]["id"], entries[1]["error"]) == (1, "UnstorableResult")
    assert entries[2]["text"] == "B"
    assert f"job {row.id} item 1: the database refused its result" in caplog.text
    refusals = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusals) == 1  # logged once, with the database's error
    assert refusals[0].exc_info is not None and "character varying" in str(refusals[0].exc_info[1])
