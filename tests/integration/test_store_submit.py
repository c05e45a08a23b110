"""Conformance of big submits on both backends: all of a job's items or none of them."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from joblot.errors import TooManyJobs
from joblot.store import Store
from joblot.store.sqlite.clients import CHUNK_ITEMS

from .conftest import Backend
from .test_store import INLINE, LEASE, T0, TYPES, claim, finish, get, new_job, submit

pytestmark = pytest.mark.anyio

BIG = 2 * CHUNK_ITEMS + 7  # SQLite loads this in three steps


async def test_a_big_job_is_stored_whole_and_runs_to_completion(
    backend: Backend, store: Store
) -> None:
    row = await submit(store, BIG)
    assert row.total == BIG and (await get(store, row.id)).status == "queued"
    assert backend.count("items") == BIG
    seen: list[int] = []
    while len(seen) < BIG:
        claimed = await claim(store, T0 + 1, limit=5000)
        seen += [item.index for item in claimed.items]
        await finish(store, claimed, T0 + 2)
    assert sorted(seen) == list(range(BIG))
    final = await get(store, row.id, T0 + 3, inline=INLINE)
    assert final.status == "completed" and final.progress == BIG


async def test_a_big_submit_cut_off_midway_leaves_all_of_its_job_or_nothing(
    backend: Backend, store: Store
) -> None:
    job = new_job(10 * CHUNK_ITEMS)
    task = asyncio.create_task(store.submit_job(job))
    await asyncio.sleep(0.05)  # somewhere in the middle of storing the items, or after
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # a cancelled submit first deletes what it stored
    stored = await store.get_job("", job.id, T0, INLINE)
    if stored is None:
        assert backend.count("items") == 0
        claimed = await store.claim_items("w", TYPES, limit=10, now=T0, lease_seconds=LEASE)
        assert claimed is None
    else:
        assert stored.total == backend.count("items") == 10 * CHUNK_ITEMS


async def test_a_big_submit_over_the_quota_stores_nothing(backend: Backend, store: Store) -> None:
    await submit(store, 1, max_active_jobs=1)
    with pytest.raises(TooManyJobs):
        await store.submit_job(new_job(BIG, max_active_jobs=1))
    assert backend.count("items") == 1


async def test_two_big_submits_with_one_key_make_one_job_and_keep_only_its_items(
    backend: Backend, store: Store
) -> None:
    first, second = new_job(BIG, key="k", digest="d"), new_job(BIG, key="k", digest="d")
    (one, made_one), (two, made_two) = await asyncio.gather(
        store.submit_job(first), store.submit_job(second)
    )
    assert one.id == two.id and sorted([made_one, made_two]) == [False, True]
    assert backend.count("items") == BIG
