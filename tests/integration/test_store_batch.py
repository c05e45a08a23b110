"""The storage conformance suite for batch operations, on SQLite and PostgreSQL alike: what
`job_stats` reads, filtered listings."""

from __future__ import annotations

import dataclasses

import pytest

from joblot.models import Status
from joblot.store import JobFilter, JobRow, Store

from .test_store import INLINE, RETENTION, T0, TYPES, claim, done, get, new_job, submit

pytestmark = pytest.mark.anyio


# -- job_stats ----------------------------------------------------------------------------------


async def test_a_new_job_was_created_and_last_changed_at_submit_and_never_started(
    store: Store,
) -> None:
    row = await get(store, (await submit(store, 2)).id)
    assert (row.failures, row.created_at, row.updated_at) == (0, T0, T0)
    assert row.started_at is None and row.finished_at is None


async def test_started_at_is_the_first_claim_and_updated_at_the_last_visible_change(
    store: Store,
) -> None:
    job = await submit(store, 4)
    first = await store.claim_items("w", TYPES, limit=2, now=T0 + 1, lease_seconds=30)
    assert first is not None
    second = await store.claim_items("w", TYPES, limit=2, now=T0 + 2, lease_seconds=30)
    assert second is not None
    row = await get(store, job.id, T0 + 2)
    # the second claim changed nothing anyone sees (still working, same progress)
    assert (row.started_at, row.updated_at) == (T0 + 1, T0 + 1)
    items = [done(first.items[0]), done(first.items[1], success=False)]
    outcome = await store.finish_items(
        first.lease_id, items, message=None, final=True, now=T0 + 3, retention=RETENTION
    )
    assert outcome.accepted
    row = await get(store, job.id, T0 + 3)
    assert (row.progress, row.failures, row.updated_at, row.finished_at) == (2, 1, T0 + 3, None)
    items = [done(second.items[0], success=False), done(second.items[1])]
    await store.finish_items(
        second.lease_id, items, message=None, final=True, now=T0 + 4, retention=RETENTION
    )
    row = await get(store, job.id, T0 + 4)
    assert (row.status, row.failures, row.started_at) == (Status.COMPLETED, 2, T0 + 1)
    assert row.updated_at == row.finished_at == T0 + 4


async def test_a_job_cancelled_before_it_started_finished_without_starting(store: Store) -> None:
    job = await submit(store, 2)
    await store.stop_job("", job.id, message=None, now=T0 + 5, retention=RETENTION)
    row = await get(store, job.id, T0 + 5)
    assert row.started_at is None
    assert row.updated_at == row.finished_at == T0 + 5


async def test_lists_and_show_many_carry_the_same_stats_as_a_read(store: Store) -> None:
    job = await submit(store, 2)
    claimed = await claim(store, T0 + 1)
    await store.finish_items(
        claimed.lease_id,
        [done(claimed.items[0], success=False)],
        message=None,
        final=False,
        now=T0 + 2,
        retention=RETENTION,
    )
    row = await get(store, job.id, T0 + 2)
    listed = await store.list_jobs("", now=T0 + 2, after=None, before=None, size=5, inline=INLINE)
    assert listed.rows == [row]
    assert await store.get_jobs("", [job.id], T0 + 2, INLINE) == [row]


# -- filtered listings --------------------------------------------------------------------------


async def _mixed_jobs(store: Store) -> dict[str, JobRow]:
    """Jobs a second apart: `completed`, `failed` (cancelled after it), `working` (claimed),
    `queued`, all demo.echo, and `other_type`, queued, of another type. Listed: other_type,
    queued, working, failed, completed."""
    rows = {}
    for i, name in enumerate(["completed", "failed", "working", "queued"]):
        rows[name] = await submit(store, 1, at=T0 + i)
        if name == "completed":
            claimed = await claim(store, T0 + i)
            await store.finish_items(
                claimed.lease_id,
                [done(claimed.items[0])],
                message=None,
                final=True,
                now=T0 + i,
                retention=RETENTION,
            )
        elif name == "failed":
            await store.stop_job("", rows[name].id, message=None, now=T0 + i, retention=RETENTION)
        elif name == "working":
            await claim(store, T0 + i)
    other = dataclasses.replace(new_job(1, at=T0 + 4), job_type="crm.sync")
    rows["other_type"], _ = await store.submit_job(other)
    return rows


async def _listed(store: Store, where: JobFilter, size: int = 10) -> list[str]:
    """The ids of every job `where` lets through, following `after` keys page by page."""
    ids, after = [], None
    while True:
        page = await store.list_jobs(
            "", now=T0 + 10, after=after, before=None, size=size, inline=INLINE, where=where
        )
        ids += [r.id for r in page.rows]
        if not page.has_more:
            return ids
        after = page.rows[-1].list_key


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({Status.QUEUED}, ["other_type", "queued"]),
        ({Status.WORKING}, ["working"]),
        ({Status.COMPLETED}, ["completed"]),
        ({Status.FAILED}, ["failed"]),
        ({Status.QUEUED, Status.WORKING}, ["other_type", "queued", "working"]),
        ({Status.FAILED, Status.COMPLETED}, ["failed", "completed"]),
        ({Status.WORKING, Status.FAILED}, ["working", "failed"]),
        (None, ["other_type", "queued", "working", "failed", "completed"]),
    ],
)
async def test_list_filters_by_status_in_listing_order(
    store: Store, statuses: set[Status] | None, expected: list[str]
) -> None:
    rows = await _mixed_jobs(store)
    where = JobFilter(statuses=None if statuses is None else frozenset(statuses))
    assert await _listed(store, where) == [rows[name].id for name in expected]
    assert await _listed(store, where, size=1) == [rows[name].id for name in expected]


async def test_list_filters_by_job_type_and_by_both(store: Store) -> None:
    rows = await _mixed_jobs(store)
    echo = await _listed(store, JobFilter(job_type="demo.echo"), size=2)
    assert echo == [rows[n].id for n in ("queued", "working", "failed", "completed")]
    assert await _listed(store, JobFilter(job_type="crm.sync")) == [rows["other_type"].id]
    assert await _listed(store, JobFilter(job_type="no.such")) == []
    both = JobFilter(statuses=frozenset({Status.QUEUED}), job_type="demo.echo")
    assert await _listed(store, both) == [rows["queued"].id]


async def test_a_filtered_list_pages_backward_with_the_same_filter(store: Store) -> None:
    rows = await _mixed_jobs(store)
    where = JobFilter(job_type="demo.echo")
    last = await get(store, rows["completed"].id, T0 + 10)
    back = await store.list_jobs(
        "", now=T0 + 10, after=None, before=last.list_key, size=2, inline=INLINE, where=where
    )
    assert [r.id for r in back.rows] == [rows["working"].id, rows["failed"].id]
    assert back.has_more
