"""The tenant feeds behind `GET /api/v2/job_statuses/events`: however many streams of a tenant
an API process holds, each change is read from the database once for all of them."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from joblot.feeds import Feeds, Subscription
from joblot.models import DEFAULT_TENANT
from joblot.watcher import Watcher

from .harness import harness

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def seen(subscription: Subscription, job_id: str, *, seconds: float = 10) -> str:
    """The status of `job_id` in the first batch that carries it."""
    async with asyncio.timeout(seconds):
        while True:
            batch = await subscription.next(seconds)
            for row in batch.rows if batch else ():
                if row.id == job_id:
                    return row.status.value


async def test_fifty_streams_of_a_tenant_share_one_read_per_change(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        feeds = Feeds(h.service, Watcher(h.service.store))
        async with AsyncExitStack() as stack:
            joined = [
                await stack.enter_async_context(feeds.joined(DEFAULT_TENANT)) for _ in range(50)
            ]
            other = await stack.enter_async_context(feeds.joined("someone-else"))
            feed = feeds.feed(DEFAULT_TENANT)
            before = feed.reads
            job = await h.submit([{"id": 1}])
            assert await asyncio.gather(*(seen(s, job["id"]) for s in joined)) == ["queued"] * 50
            assert feed.reads - before <= 2, "one read per change, not one per stream"
            assert await other.next(0.3) is None  # another tenant's streams hear nothing
            # a stream that joins later starts where the feed is, and hears what comes next
            late = await stack.enter_async_context(feeds.joined(DEFAULT_TENANT))
            h.start_worker()
            assert await seen(late, job["id"]) in ("working", "completed")


async def test_a_feed_stops_with_its_last_stream_and_starts_again_with_the_next(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        feeds = Feeds(h.service, Watcher(h.service.store))
        async with feeds.joined(DEFAULT_TENANT) as first:
            assert first.position
        async with feeds.joined(DEFAULT_TENANT) as again:
            job = await h.submit([{"id": 1}])
            assert await seen(again, job["id"]) == "queued"
