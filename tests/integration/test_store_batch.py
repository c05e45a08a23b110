"""The storage conformance suite for batch operations, on SQLite and PostgreSQL alike: what
`job_stats` reads, filtered listings."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from joblot.models import Limit, Status, completion_message
from joblot.store import NO_LIMITS, Claim, JobFilter, JobRow, Store, TypeLimits

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


# -- results by outcome -------------------------------------------------------------------------


async def _finished_with_failures(store: Store, items: int = 10) -> JobRow:
    """A job whose items with an index divisible by 3 failed."""
    job = await submit(store, items)
    claimed = await claim(store, T0 + 1)
    results = [done(i, success=i.index % 3 != 0) for i in claimed.items]
    await store.finish_items(
        claimed.lease_id, results, message=None, final=True, now=T0 + 2, retention=RETENTION
    )
    return job


@pytest.mark.parametrize("success", [False, True, None])
async def test_results_page_through_only_one_outcome_both_ways(
    store: Store, success: bool | None
) -> None:
    job = await _finished_with_failures(store, 10)
    wanted = [i for i in range(10) if success is None or (i % 3 != 0) == success]
    seen, after = [], None
    while True:
        page = await store.list_results(
            "", job.id, now=T0 + 3, after=after, before=None, size=2, success=success
        )
        assert page is not None
        seen += [i for i, _ in page.rows]
        if not page.has_more:
            break
        after = page.rows[-1][0]
    assert seen == wanted
    back = await store.list_results(
        "", job.id, now=T0 + 3, after=None, before=wanted[-1], size=2, success=success
    )
    assert back is not None and [i for i, _ in back.rows] == wanted[-3:-1]
    assert back.has_more == (len(wanted) > 3)


# -- failed items kept for a retry ----------------------------------------------------------


async def test_failed_items_are_kept_as_submitted_in_index_order(store: Store) -> None:
    job = await _finished_with_failures(store, 10)
    kept = await store.failed_items("", job.id, T0 + 3)
    assert kept is not None
    assert [orjson.loads(p) for p in kept] == [{"id": i} for i in (0, 3, 6, 9)]
    assert await store.failed_items("other", job.id, T0 + 3) is None
    assert await store.failed_items("", "0" * 32, T0 + 3) is None
    clean = await submit(store, 2, at=T0 + 4)
    claimed = await claim(store, T0 + 5)
    await store.finish_items(
        claimed.lease_id,
        [done(i) for i in claimed.items],
        message=None,
        final=True,
        now=T0 + 5,
        retention=RETENTION,
    )
    assert await store.failed_items("", clean.id, T0 + 6) == []


async def test_an_item_whose_worker_vanished_for_good_is_kept_too(store: Store) -> None:
    job = await submit(store, 2)
    for attempt in range(2):
        await store.claim_items("w", TYPES, limit=1, now=T0 + 100 * attempt, lease_seconds=30)
        await store.requeue_expired(T0 + 100 * attempt + 31, 2, RETENTION)
    kept = await store.failed_items("", job.id, T0 + 300)
    assert kept is not None and [orjson.loads(p) for p in kept] == [{"id": 0}]


async def test_a_refused_finish_keeps_nothing(store: Store) -> None:
    job = await submit(store, 1)
    first = await claim(store, T0)
    await store.requeue_expired(T0 + 31, 3, RETENTION)  # its worker vanished
    second = await claim(store, T0 + 32)
    stale = await store.finish_items(
        first.lease_id,
        [done(first.items[0], success=False)],
        message=None,
        final=True,
        now=T0 + 33,
        retention=RETENTION,
    )
    assert not stale.accepted
    assert await store.failed_items("", job.id, T0 + 33) == []
    await store.finish_items(
        second.lease_id,
        [done(second.items[0], success=False)],
        message=None,
        final=True,
        now=T0 + 34,
        retention=RETENTION,
    )
    assert await store.failed_items("", job.id, T0 + 34) == [orjson.dumps({"id": 0})]


# -- limits per job type --------------------------------------------------------------------


def limited(free: int = 100, **limit: Any) -> TypeLimits:
    """demo.echo limited as given; the worker has room for `free` items."""
    return TypeLimits({"demo.echo": Limit(**limit)}, free)


async def take(
    store: Store, now: float, limits: TypeLimits, types: list[str] | None = None
) -> Claim | None:
    return await store.claim_items(
        "w", types or TYPES, limit=100, now=now, lease_seconds=30, limits=limits
    )


async def test_concurrency_counts_the_items_leased_under_live_leases(store: Store) -> None:
    job = await submit(store, 5)
    limits = limited(concurrency=2)
    first = await take(store, T0, limits)
    assert first is not None and [i.index for i in first.items] == [0, 1]
    assert await take(store, T0 + 1, limits) is None
    row = await get(store, job.id, T0 + 1)
    assert row.message == "Throttled: at most 2 demo.echo items run at once"
    await store.finish_items(
        first.lease_id,
        [done(first.items[0])],
        message=None,
        final=False,
        now=T0 + 2,
        retention=RETENTION,
    )
    second = await take(store, T0 + 3, limits)
    assert second is not None and [i.index for i in second.items] == [2]


async def test_a_limited_claim_holds_slots_and_more_items_to_run_through_them(
    store: Store,
) -> None:
    job = await submit(store, 100)
    # The worker runs 8 at once; the limit leaves it 4 slots: half the 100 items its pace asks.
    limits = TypeLimits({"demo.echo": Limit(concurrency=4)}, free=8, capacity=8)
    first = await take(store, T0, limits)
    assert first is not None and (first.slots, len(first.items)) == (4, 50)
    assert await take(store, T0 + 1, limits) is None  # its 4 slots are the whole limit
    assert (await get(store, job.id, T0 + 1)).message == (
        "Throttled: at most 4 demo.echo items run at once"
    )
    # With 3 of its items left, the lease holds 3 slots: 1 is free for another claim.
    await store.finish_items(
        first.lease_id,
        [done(item) for item in first.items[:47]],
        message=None,
        final=False,
        now=T0 + 2,
        retention=RETENTION,
    )
    second = await take(store, T0 + 3, limits)
    assert second is not None and (second.slots, len(second.items)) == (1, 13)
    counts = await store.metric_counts(T0 + 3)
    assert counts.running == [("demo.echo", 4)]  # what the limit counts: 3 + 1
    unlimited = await take(store, T0 + 4, NO_LIMITS)
    assert unlimited is not None and unlimited.slots is None


async def test_the_claiming_worker_counts_its_own_leases_itself(store: Store) -> None:
    await submit(store, 100)
    limits = TypeLimits({"demo.echo": Limit(concurrency=4)}, free=8, capacity=8)
    first = await take(store, T0, limits)
    assert first is not None and first.slots == 4
    # Its items all ran; their results are on their way: the worker says the lease holds none.
    done_running = dataclasses.replace(limits, own={first.lease_id: ("demo.echo", 0)})
    second = await take(store, T0 + 1, done_running)
    assert second is not None and second.slots == 4
    # Another worker, not told, counts both leases from the database: the limit is reached.
    assert await take(store, T0 + 2, limits) is None
    # Told only of its second lease (1 item running), it counts the first from the database.
    one_left = dataclasses.replace(limits, own={second.lease_id: ("demo.echo", 1)})
    assert await take(store, T0 + 3, one_left) is None


async def test_a_lapsed_lease_frees_its_share_at_once(store: Store) -> None:
    await submit(store, 5)
    limits = limited(concurrency=2)
    assert await take(store, T0, limits) is not None
    assert await take(store, T0 + 29, limits) is None
    # the lease lapsed at T0 + 30: its items count no more, before anyone requeues them
    late = await take(store, T0 + 31, limits)
    assert late is not None and [i.index for i in late.items] == [2, 3]


async def test_a_claim_takes_no_more_than_the_worker_has_room_for(store: Store) -> None:
    await submit(store, 5)
    small = await take(store, T0, limited(free=1, concurrency=4))
    assert small is not None and len(small.items) == 1
    assert await take(store, T0, limited(free=0, concurrency=4)) is None


async def test_rate_counts_the_items_started_in_the_last_period(store: Store) -> None:
    job = await submit(store, 10)
    limits = limited(rate=3, per=10.0)
    first = await take(store, T0, limits)
    assert first is not None and len(first.items) == 3
    assert await take(store, T0 + 9.9, limits) is None
    row = await get(store, job.id, T0 + 9.9)
    assert row.message == "Throttled: at most 3 demo.echo items start per 10 s"
    again = await take(store, T0 + 10.1, limits)
    assert again is not None and [i.index for i in again.items] == [3, 4, 5]


async def test_the_tighter_limit_holds(store: Store) -> None:
    await submit(store, 10)
    claimed = await take(store, T0, limited(concurrency=5, rate=2, per=60.0))
    assert claimed is not None and len(claimed.items) == 2


async def test_a_type_held_back_delays_no_other_type(store: Store) -> None:
    limited_job = await submit(store, 5)
    other = dataclasses.replace(new_job(2, at=T0 + 1), job_type="other.type")
    other_row, _ = await store.submit_job(other)
    limits = limited(concurrency=1)
    types = ["demo.echo", "other.type"]
    first = await take(store, T0 + 2, limits, types)
    assert first is not None and first.job_id == limited_job.id
    # demo.echo is at its limit and its job was served longest ago: other.type goes next
    second = await take(store, T0 + 3, limits, types)
    assert second is not None and second.job_id == other_row.id
    assert await take(store, T0 + 4, limits, types) is None


async def test_a_handlers_message_is_kept_and_completion_replaces_the_throttle(
    store: Store,
) -> None:
    job = await submit(store, 2)
    limits = limited(concurrency=1)
    first = await take(store, T0, limits)
    assert first is not None
    row = await get(store, job.id, T0)
    assert row.message == "Throttled: at most 1 demo.echo items run at once"  # the limit binds
    await store.finish_items(
        first.lease_id,
        [done(first.items[0])],
        message="halfway",
        final=True,
        now=T0 + 1,
        retention=RETENTION,
    )
    second = await take(store, T0 + 2, limits)
    assert second is not None
    assert (await get(store, job.id, T0 + 2)).message == "halfway"
    await store.finish_items(
        second.lease_id,
        [done(second.items[0])],
        message=None,
        final=True,
        now=T0 + 3,
        retention=RETENTION,
    )
    assert (await get(store, job.id, T0 + 3)).message == "halfway"
    clean = await submit(store, 2, at=T0 + 4)
    for at in (T0 + 5, T0 + 6):
        claimed = await take(store, at, limits)
        assert claimed is not None
        await store.finish_items(
            claimed.lease_id,
            [done(i) for i in claimed.items],
            message=None,
            final=True,
            now=at,
            retention=RETENTION,
        )
    assert (await get(store, clean.id, T0 + 7)).message == completion_message(T0 + 6)


@pytest.mark.parametrize("success", [None, False])
async def test_an_export_reads_the_pages_a_listing_reads(
    store: Store, success: bool | None
) -> None:
    job = await _finished_with_failures(store, 10)
    exported, after = [], None
    while True:
        page = await store.export_results(
            "", job.id, now=T0 + 3, after=after, size=3, success=success
        )
        assert page is not None
        exported += page.rows
        if not page.has_more:
            break
        after = page.rows[-1][0]
    listed = await store.list_results(
        "", job.id, now=T0 + 3, after=None, before=None, size=100, success=success
    )
    assert listed is not None and exported == listed.rows
    assert await store.export_results("x", job.id, now=T0, after=None, size=3) is None
