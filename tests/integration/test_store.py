"""The storage conformance suite: one set of tests, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from joblot.errors import IdempotencyKeyReused, JobFinished, TooManyJobs
from joblot.models import Status, cancel_message, completion_message, new_job_id
from joblot.store import Claim, ClaimedItem, FinishedItem, JobRow, NewJob, Store, TokenCount
from joblot.store.postgres import PostgresStore
from joblot.store.sql import load_migrations

from .conftest import Backend

pytestmark = pytest.mark.anyio

T0 = 1_750_000_000.0  # every test drives time through `now`, starting here
LEASE = 30.0
RETENTION = 3600.0
INLINE = 1000
TYPES = ["demo.echo"]


def new_job(
    items: int = 3,
    *,
    at: float = T0,
    tenant: str = "",
    key: str | None = None,
    digest: str | None = None,
    max_failures: int | None = None,
    max_active_jobs: int | None = None,
) -> NewJob:
    """A job of `items` items with ids 0, 1, ... created at `at`."""
    payloads = [orjson.dumps({"id": i}) for i in range(items)]
    return NewJob(
        new_job_id(at),
        tenant,
        "demo.echo",
        "echo",
        max_failures,
        payloads,
        at,
        key,
        digest,
        max_active_jobs,
    )


def done(item: ClaimedItem, *, success: bool = True) -> FinishedItem:
    """The result of one item, as a worker reports it."""
    entry: dict[str, Any] = {"index": item.index, "success": success}
    return FinishedItem(item.index, success, orjson.dumps(entry))


async def submit(store: Store, items: int = 3, at: float = T0, **kwargs: Any) -> JobRow:
    """Submit a fresh job and return its row."""
    row, created = await store.submit_job(new_job(items, at=at, **kwargs))
    assert created
    return row


async def claim(store: Store, now: float, limit: int = 100) -> Claim:
    """Claim a batch that must be there."""
    claimed = await store.claim_items("worker-1", TYPES, limit=limit, now=now, lease_seconds=LEASE)
    assert claimed is not None
    return claimed


async def finish(
    store: Store, claimed: Claim, now: float, *, final: bool = True, message: str | None = None
) -> None:
    """Report every item of a claim as a success; the finish must be accepted."""
    outcome = await store.finish_items(
        claimed.lease_id,
        [done(i) for i in claimed.items],
        message=message,
        final=final,
        now=now,
        retention=RETENTION,
    )
    assert outcome.accepted


async def get(store: Store, job_id: str, now: float = T0, inline: int = INLINE) -> JobRow:
    """A job that must exist."""
    row = await store.get_job("", job_id, now, inline)
    assert row is not None
    return row


# -- migrations -------------------------------------------------------------------------------


async def test_migrate_applies_each_migration_once_and_reports_versions(
    backend: Backend, fresh_store: Store
) -> None:
    latest = len(load_migrations(backend.name))
    assert await fresh_store.schema_version() == (0, latest)
    assert await fresh_store.migrate() == list(range(1, latest + 1))
    assert await fresh_store.migrate() == []
    assert await fresh_store.schema_version() == (latest, latest)


async def test_nodes_migrating_at_once_apply_each_migration_once(
    backend: Backend, fresh_store: Store, open_store: Callable[[], Store]
) -> None:
    latest = len(load_migrations(backend.name))
    first, second = await asyncio.gather(fresh_store.migrate(), open_store().migrate())
    assert sorted(first + second) == list(range(1, latest + 1))


# -- submit and read --------------------------------------------------------------------------


async def test_submitted_job_reads_back_queued(store: Store) -> None:
    row = await submit(store, 3)
    assert (row.status, row.total, row.progress, row.message, row.results) == (
        Status.QUEUED,
        3,
        0,
        None,
        None,
    )
    assert await get(store, row.id) == row
    assert await store.job_version("", row.id, T0) == row.version


async def test_jobs_of_another_tenant_read_as_missing(store: Store) -> None:
    row = await submit(store, 1, tenant="acme")
    assert await store.get_job("other", row.id, T0, INLINE) is None
    assert await store.job_version("other", row.id, T0) is None
    assert await store.get_jobs("other", [row.id], T0, INLINE) == []
    assert (
        await store.list_results("other", row.id, now=T0, after=None, before=None, size=10) is None
    )
    assert await store.get_job("acme", row.id, T0, INLINE) == row


async def test_get_jobs_answers_in_the_order_asked_without_missing_ones(store: Store) -> None:
    a = await submit(store, 1, at=T0)
    b = await submit(store, 1, at=T0 + 1)
    rows = await store.get_jobs("", [b.id, "no-such-job", a.id], T0 + 2, INLINE)
    assert [r.id for r in rows] == [b.id, a.id]


async def _four_jobs(store: Store) -> list[JobRow]:
    """Jobs a..d created a second apart; b is cancelled at T0+10, a at T0+20."""
    a, b, c, d = [await submit(store, 1, at=T0 + i) for i in range(4)]
    await store.stop_job("", b.id, message=None, now=T0 + 10, retention=RETENTION)
    await store.stop_job("", a.id, message=None, now=T0 + 20, retention=RETENTION)
    return [a, b, c, d]


async def test_list_puts_unfinished_jobs_first_then_finished_newest_first(store: Store) -> None:
    a, b, c, d = await _four_jobs(store)
    page = await store.list_jobs("", now=T0 + 30, after=None, before=None, size=10, inline=INLINE)
    assert [r.id for r in page.rows] == [d.id, c.id, a.id, b.id]
    assert not page.has_more


async def test_list_pages_forward_and_backward_by_key(store: Store) -> None:
    a, b, c, d = await _four_jobs(store)
    now = T0 + 30
    first = await store.list_jobs("", now=now, after=None, before=None, size=2, inline=INLINE)
    assert ([r.id for r in first.rows], first.has_more) == ([d.id, c.id], True)
    second = await store.list_jobs(
        "", now=now, after=first.rows[-1].list_key, before=None, size=2, inline=INLINE
    )
    assert ([r.id for r in second.rows], second.has_more) == ([a.id, b.id], False)
    back = await store.list_jobs(
        "", now=now, after=None, before=second.rows[0].list_key, size=2, inline=INLINE
    )
    assert ([r.id for r in back.rows], back.has_more) == ([d.id, c.id], False)
    middle = await store.list_jobs(
        "", now=now, after=None, before=second.rows[1].list_key, size=2, inline=INLINE
    )
    assert ([r.id for r in middle.rows], middle.has_more) == ([c.id, a.id], True)


async def test_same_idempotency_key_returns_the_same_job(store: Store) -> None:
    first, created = await store.submit_job(new_job(2, key="k1", digest="h1"))
    again, created_again = await store.submit_job(new_job(2, at=T0 + 1, key="k1", digest="h1"))
    assert created and not created_again
    assert again == first
    other_tenant, created_other = await store.submit_job(
        new_job(2, tenant="acme", key="k1", digest="h1")
    )
    assert created_other and other_tenant.id != first.id


async def test_idempotency_key_reused_for_a_different_body_is_refused(store: Store) -> None:
    await store.submit_job(new_job(2, key="k1", digest="h1"))
    with pytest.raises(IdempotencyKeyReused):
        await store.submit_job(new_job(2, at=T0 + 1, key="k1", digest="h2"))


async def test_idempotency_key_of_an_expired_job_starts_a_new_job(store: Store) -> None:
    old, _ = await store.submit_job(new_job(1, key="k1", digest="h1"))
    await store.stop_job("", old.id, message=None, now=T0 + 1, retention=10.0)
    row, created = await store.submit_job(new_job(1, at=T0 + 20, key="k1", digest="h2"))
    assert created and row.id != old.id
    assert await store.get_job("", old.id, T0 + 2, INLINE) is None  # purged, not just expired


# -- claims -----------------------------------------------------------------------------------


async def test_claims_take_turns_across_jobs(store: Store) -> None:
    a = await submit(store, 3, at=T0)
    b = await submit(store, 3, at=T0 + 1)
    served = [(await claim(store, T0 + 10 + i, limit=1)).job_id for i in range(4)]
    assert set(served) == {a.id, b.id}
    assert served[0] != served[1] and served[:2] == served[2:]


async def test_claims_only_the_job_types_asked_for(store: Store) -> None:
    await submit(store, 1)
    assert (
        await store.claim_items("worker-1", ["other.type"], limit=10, now=T0, lease_seconds=LEASE)
        is None
    )
    assert await store.claim_items("worker-1", [], limit=10, now=T0, lease_seconds=LEASE) is None


async def test_claim_leases_items_in_index_order_and_marks_the_job_working(store: Store) -> None:
    row = await submit(store, 5)
    claimed = await claim(store, T0 + 1, limit=2)
    assert (claimed.job_id, claimed.job_type) == (row.id, "demo.echo")
    assert [(i.index, i.attempt) for i in claimed.items] == [(0, 1), (1, 1)]
    assert orjson.loads(claimed.items[1].payload) == {"id": 1}
    after = await get(store, row.id, T0 + 1)
    assert (after.status, after.progress, after.version) == (Status.WORKING, 0, 2)
    assert after.results == []  # working: inline results so far, none yet


async def test_claim_finds_nothing_once_every_item_is_leased(store: Store) -> None:
    await submit(store, 2)
    await claim(store, T0 + 1, limit=5)
    assert (
        await store.claim_items("worker-2", TYPES, limit=5, now=T0 + 2, lease_seconds=LEASE) is None
    )


async def test_concurrent_claimers_never_share_an_item(
    store: Store, open_store: Callable[[], Store]
) -> None:
    for i in range(4):
        await submit(store, 10, at=T0 + i)
    other = open_store()

    async def drain(node: Store, name: str) -> list[tuple[str, int]]:
        taken = []
        while (
            c := await node.claim_items(name, TYPES, limit=3, now=T0 + 10, lease_seconds=LEASE)
        ) is not None:
            taken += [(c.job_id, i.index) for i in c.items]
        return taken

    results = await asyncio.gather(
        *(drain(node, f"w{n}") for n, node in enumerate([store, other, store, other]))
    )
    everything = [pair for taken in results for pair in taken]
    assert len(everything) == len(set(everything)) == 40


# -- finishing --------------------------------------------------------------------------------


async def test_finishing_counts_progress_and_completes_with_a_completion_message(
    store: Store,
) -> None:
    row = await submit(store, 3)
    first = await claim(store, T0 + 1, limit=2)
    outcome = await store.finish_items(
        first.lease_id,
        [done(i) for i in first.items],
        message=None,
        final=True,
        now=T0 + 2,
        retention=RETENTION,
    )
    assert (outcome.accepted, outcome.status) == (True, Status.WORKING)
    assert (await get(store, row.id, T0 + 2)).progress == 2
    rest = await claim(store, T0 + 3)
    outcome = await store.finish_items(
        rest.lease_id,
        [done(rest.items[0], success=False)],
        message=None,
        final=True,
        now=T0 + 4,
        retention=RETENTION,
    )
    assert outcome.status is Status.COMPLETED  # an item failure shows in results only
    final = await get(store, row.id, T0 + 4)
    assert (final.status, final.progress, final.message) == (
        Status.COMPLETED,
        3,
        completion_message(T0 + 4),
    )
    assert final.results is not None
    assert [orjson.loads(e)["index"] for e in final.results] == [0, 1, 2]


async def test_a_message_reported_by_a_handler_is_kept_on_completion(store: Store) -> None:
    row = await submit(store, 1)
    await finish(store, await claim(store, T0 + 1), T0 + 2, message="Synced 1 ticket")
    final = await get(store, row.id, T0 + 2)
    assert (final.status, final.message) == (Status.COMPLETED, "Synced 1 ticket")


async def test_finish_after_the_lease_lapsed_is_refused_and_records_nothing(store: Store) -> None:
    row = await submit(store, 2)
    claimed = await claim(store, T0)
    before = await get(store, row.id, T0)
    outcome = await store.finish_items(
        claimed.lease_id,
        [done(i) for i in claimed.items],
        message="late",
        final=True,
        now=T0 + LEASE + 1,
        retention=RETENTION,
    )
    assert not outcome.accepted
    assert await get(store, row.id, T0 + LEASE + 1) == before
    page = await store.list_results(
        "", row.id, now=T0 + LEASE + 1, after=None, before=None, size=10
    )
    assert page is not None and page.rows == []


async def test_finishing_the_same_items_twice_is_refused(store: Store) -> None:
    row = await submit(store, 3)
    claimed = await claim(store, T0 + 1, limit=2)
    first = [done(claimed.items[0])]
    await store.finish_items(
        claimed.lease_id, first, message=None, final=False, now=T0 + 2, retention=RETENTION
    )
    again = await store.finish_items(
        claimed.lease_id, first, message=None, final=False, now=T0 + 3, retention=RETENTION
    )
    assert not again.accepted
    assert (await get(store, row.id, T0 + 3)).progress == 1
    page = await store.list_results("", row.id, now=T0 + 3, after=None, before=None, size=10)
    assert page is not None and [i for i, _ in page.rows] == [0]


async def test_a_batch_with_an_item_not_held_by_the_lease_is_refused_whole(store: Store) -> None:
    row = await submit(store, 3)
    claimed = await claim(store, T0 + 1, limit=2)  # items 0 and 1, not 2
    stranger = ClaimedItem(2, b"{}", 1)
    refused = await store.finish_items(
        claimed.lease_id,
        [done(claimed.items[0]), done(stranger)],
        message=None,
        final=False,
        now=T0 + 2,
        retention=RETENTION,
    )
    assert not refused.accepted
    assert (await get(store, row.id, T0 + 2)).progress == 0
    await finish(store, claimed, T0 + 3)  # the lease still holds both of its items
    assert (await get(store, row.id, T0 + 3)).progress == 2


async def test_passing_the_failure_threshold_fails_the_job_and_skips_the_rest(
    store: Store,
) -> None:
    row = await submit(store, 4, max_failures=0)
    one = await claim(store, T0 + 1, limit=1)
    two = await claim(store, T0 + 2, limit=1)
    outcome = await store.finish_items(
        one.lease_id,
        [done(one.items[0], success=False)],
        message=None,
        final=False,
        now=T0 + 3,
        retention=RETENTION,
    )
    assert outcome.status is Status.FAILED
    failed = await get(store, row.id, T0 + 3)
    assert failed.message == "Failed: 1 items failed, more than the 0 allowed"
    assert (
        await store.claim_items("worker-1", TYPES, limit=10, now=T0 + 4, lease_seconds=LEASE)
        is None
    )
    # An item that was running when the job failed still reports; the job stays failed.
    late = await store.finish_items(
        two.lease_id,
        [done(two.items[0])],
        message=None,
        final=True,
        now=T0 + 5,
        retention=RETENTION,
    )
    assert (late.accepted, late.status) == (True, Status.FAILED)
    after = await get(store, row.id, T0 + 5)
    assert (after.status, after.progress, after.message) == (
        Status.FAILED,
        2,
        "Failed: 1 items failed, more than the 0 allowed",
    )


async def test_job_version_moves_only_with_visible_changes(store: Store) -> None:
    row = await submit(store, 3)
    versions: list[int | None] = [row.version]
    claimed = await claim(store, T0 + 1, limit=3)
    versions.append(await store.job_version("", row.id, T0 + 1))
    await store.finish_items(
        claimed.lease_id, [], message=None, final=False, now=T0 + 2, retention=RETENTION
    )  # nothing new
    versions.append(await store.job_version("", row.id, T0 + 2))
    await store.finish_items(
        claimed.lease_id,
        [done(claimed.items[0])],
        message=None,
        final=False,
        now=T0 + 3,
        retention=RETENTION,
    )
    versions.append(await store.job_version("", row.id, T0 + 3))
    assert versions == [1, 2, 2, 3]


# -- leases -----------------------------------------------------------------------------------


async def test_requeue_returns_the_items_of_lapsed_leases(store: Store) -> None:
    row = await submit(store, 3)
    claimed = await claim(store, T0, limit=2)
    assert await store.requeue_expired(T0 + LEASE, 3, RETENTION) == 0  # expires, not lapsed
    assert await store.requeue_expired(T0 + LEASE + 1, 3, RETENTION) == 2
    again = await claim(store, T0 + LEASE + 2, limit=5)
    assert [(i.index, i.attempt) for i in again.items] == [(0, 2), (1, 2), (2, 1)]
    refused = await store.finish_items(
        claimed.lease_id,
        [done(claimed.items[0])],
        message=None,
        final=True,
        now=T0 + LEASE + 3,
        retention=RETENTION,
    )
    assert not refused.accepted
    await finish(store, again, T0 + LEASE + 3)
    assert (await get(store, row.id, T0 + LEASE + 3)).status is Status.COMPLETED


async def test_an_item_out_of_attempts_fails_with_worker_lost(store: Store) -> None:
    row = await submit(store, 1)
    await claim(store, T0)
    assert await store.requeue_expired(T0 + LEASE + 1, 2, RETENTION) == 1  # attempt 1 of 2
    await claim(store, T0 + 40)
    assert await store.requeue_expired(T0 + 40 + LEASE + 1, 2, RETENTION) == 1  # attempt 2 of 2
    final = await get(store, row.id, T0 + 80)
    assert (final.status, final.progress) == (Status.COMPLETED, 1)
    assert final.results is not None
    entry = orjson.loads(final.results[0])
    assert (entry["index"], entry["id"], entry["action"]) == (0, 0, "echo")
    assert (entry["success"], entry["error"]) == (False, "WorkerLost")
    assert (
        await store.claim_items("worker-1", TYPES, limit=10, now=T0 + 80, lease_seconds=LEASE)
        is None
    )


async def test_a_lapsed_lease_of_a_purged_job_does_not_stop_requeues(store: Store) -> None:
    gone = await submit(store, 2, at=T0)
    await claim(store, T0)  # this lease outlives its job: held until T0+30
    await store.stop_job("", gone.id, message=None, now=T0 + 1, retention=10.0)  # kept until T0+11
    assert await store.purge_expired(T0 + 12) == 1
    await submit(store, 2, at=T0 + 20)
    await claim(store, T0 + 20)  # held until T0+50
    assert await store.requeue_expired(T0 + 51, 3, RETENTION) == 2
    again = await claim(store, T0 + 52)
    assert [(i.index, i.attempt) for i in again.items] == [(0, 2), (1, 2)]


async def test_renew_extends_only_live_leases(store: Store) -> None:
    await submit(store, 1, at=T0)
    await submit(store, 1, at=T0 + 1)
    early = await claim(store, T0)  # held until T0+30
    late = await claim(store, T0 + 20)  # held until T0+50
    assert await store.renew_leases([], T0, T0 + 1) == set()
    renewed = await store.renew_leases([early.lease_id, late.lease_id, 10**12], T0 + 40, T0 + 70)
    assert renewed == {late.lease_id}
    refused = await store.finish_items(
        early.lease_id,
        [done(early.items[0])],
        message=None,
        final=True,
        now=T0 + 40,
        retention=RETENTION,
    )
    assert not refused.accepted
    await finish(store, late, T0 + 60)  # past its first expiry, within the renewal


async def test_cancel_skips_unclaimed_items_and_records_running_ones(store: Store) -> None:
    row = await submit(store, 5)
    claimed = await claim(store, T0 + 1, limit=3)
    first = [done(claimed.items[0])]
    await store.finish_items(
        claimed.lease_id, first, message=None, final=False, now=T0 + 2, retention=RETENTION
    )
    assert await store.stop_job("", row.id, message=None, now=T0 + 3, retention=RETENTION)
    stopped = await store.get_job("", row.id, T0 + 3, INLINE)
    assert stopped is not None
    assert (stopped.status, stopped.progress, stopped.message) == (
        Status.FAILED,
        1,
        cancel_message(2, 5),  # items 3 and 4 were never claimed
    )
    assert stopped.message == "Cancelled: 2 of 5 items were skipped"
    assert (
        await store.claim_items("worker-1", TYPES, limit=10, now=T0 + 4, lease_seconds=LEASE)
        is None
    )
    # Item 1 was running: its result is recorded. Item 2 never started: handed back, skipped.
    running = [done(claimed.items[1])]
    late = await store.finish_items(
        claimed.lease_id, running, message=None, final=False, now=T0 + 4, retention=RETENTION
    )
    assert (late.accepted, late.status) == (True, Status.FAILED)
    assert await store.release_lease(claimed.lease_id, T0 + 5) == 1
    final = await get(store, row.id, T0 + 5)
    assert (final.status, final.progress, final.message) == (
        Status.FAILED,
        2,
        "Cancelled: 3 of 5 items were skipped",
    )
    with pytest.raises(JobFinished):
        await store.stop_job("", row.id, message=None, now=T0 + 6, retention=RETENTION)
    assert (
        await store.stop_job("other-tenant", row.id, message=None, now=T0 + 6, retention=RETENTION)
        is False
    )


async def test_a_final_finish_keeps_the_lease_while_items_are_left(store: Store) -> None:
    row = await submit(store, 2)
    claimed = await claim(store, T0 + 1)
    first = [done(claimed.items[0])]
    await store.finish_items(
        claimed.lease_id, first, message=None, final=True, now=T0 + 2, retention=RETENTION
    )
    # Item 1 is still covered by the lease, so when the lease lapses it is requeued.
    assert await store.renew_leases([claimed.lease_id], T0 + 3, T0 + 20) == {claimed.lease_id}
    assert await store.requeue_expired(T0 + 21, 3, RETENTION) == 1
    again = await claim(store, T0 + 22)
    assert [(i.index, i.attempt) for i in again.items] == [(1, 2)]
    await finish(store, again, T0 + 23)
    assert (await get(store, row.id, T0 + 23)).status is Status.COMPLETED
    assert await store.renew_leases([again.lease_id], T0 + 24, T0 + 40) == set()  # released


async def test_abort_stops_the_job_with_the_handlers_message(store: Store) -> None:
    row = await submit(store, 2)
    assert await store.stop_job(
        None, row.id, message="Aborted: the API key was revoked", now=T0 + 1, retention=RETENTION
    )
    final = await get(store, row.id, T0 + 1)
    assert (final.status, final.message) == (Status.FAILED, "Aborted: the API key was revoked")


async def test_results_reported_with_an_abort_fail_the_job_even_when_they_are_its_last(
    store: Store,
) -> None:
    row = await submit(store, 2)
    claimed = await claim(store, T0 + 1)
    outcome = await store.finish_items(
        claimed.lease_id,
        [done(item, success=False) for item in claimed.items],
        message="ignored: the abort's message wins",
        final=True,
        now=T0 + 2,
        retention=RETENTION,
        abort="the API key was revoked",
    )
    assert (outcome.accepted, outcome.status) == (True, Status.FAILED)
    final = await get(store, row.id, T0 + 2)
    assert (final.status, final.progress, final.message) == (
        Status.FAILED,
        2,
        "the API key was revoked",
    )
    assert final.results is not None and len(final.results) == 2
    assert await store.renew_leases([claimed.lease_id], T0 + 3, T0 + 9) == set()  # released


async def test_release_lease_refunds_attempts_and_requeues_at_once(store: Store) -> None:
    row = await submit(store, 2)
    claimed = await claim(store, T0 + 1)
    assert await store.release_lease(claimed.lease_id, T0 + 2) == 2
    assert await store.release_lease(claimed.lease_id, T0 + 2) == 0  # already given back
    again = await claim(store, T0 + 3)
    assert [(i.index, i.attempt) for i in again.items] == [(0, 1), (1, 1)]
    refused = await store.finish_items(
        claimed.lease_id,
        [done(claimed.items[0])],
        message=None,
        final=True,
        now=T0 + 4,
        retention=RETENTION,
    )
    assert not refused.accepted
    assert (await get(store, row.id, T0 + 4)).progress == 0


async def test_quota_refuses_a_tenant_past_its_active_jobs(store: Store) -> None:
    await submit(store, 1, at=T0, tenant="acme", max_active_jobs=2)
    second = await submit(store, 1, at=T0 + 1, tenant="acme", max_active_jobs=2)
    with pytest.raises(TooManyJobs):
        await store.submit_job(new_job(1, at=T0 + 2, tenant="acme", max_active_jobs=2))
    await submit(store, 1, at=T0 + 2, tenant="other", max_active_jobs=2)  # per tenant
    await store.stop_job("acme", second.id, message=None, now=T0 + 3, retention=RETENTION)
    await submit(store, 1, at=T0 + 4, tenant="acme", max_active_jobs=2)  # finished: room again


async def test_tokens_are_found_by_digest_until_revoked(store: Store) -> None:
    await store.create_token("t1", "acme", "digest-1", T0)
    await store.create_token("t2", "beta", "digest-2", T0 + 1)
    assert await store.find_token("digest-1") == ("t1", "acme")
    assert await store.count_tokens() == TokenCount(live=2, revoked=0)
    assert await store.live_tokens(["t1", "t2", "t3"]) == {"t1", "t2"}
    assert await store.revoke_token("t1", T0 + 2)
    assert not await store.revoke_token("t1", T0 + 3)  # already revoked
    assert await store.find_token("digest-1") is None
    assert await store.count_tokens() == TokenCount(live=1, revoked=1)
    assert await store.live_tokens(["t1", "t2"]) == {"t2"}
    assert await store.live_tokens([]) == set()
    assert [(t.id, t.tenant, t.revoked_at) for t in await store.list_tokens()] == [
        ("t1", "acme", T0 + 2),
        ("t2", "beta", None),
    ]


# -- results and retention ----------------------------------------------------------------------


async def test_results_are_inline_only_up_to_the_limit(store: Store) -> None:
    row = await submit(store, 3, at=T0)
    await finish(store, await claim(store, T0 + 1), T0 + 2)
    assert len((await get(store, row.id, T0 + 2, inline=3)).results or []) == 3
    assert (await get(store, row.id, T0 + 2, inline=2)).results is None
    [listed] = await store.get_jobs("", [row.id], T0 + 2, 2)
    assert listed.results is None
    queued = await submit(store, 3, at=T0 + 3)
    assert (await get(store, queued.id, T0 + 3)).results is None  # queued: never inline


async def test_results_page_by_index_in_both_directions(store: Store) -> None:
    row = await submit(store, 5)
    await finish(store, await claim(store, T0 + 1), T0 + 2)

    async def page(after: int | None, before: int | None) -> tuple[list[int], bool]:
        got = await store.list_results("", row.id, now=T0 + 2, after=after, before=before, size=2)
        assert got is not None
        assert all(orjson.loads(e)["index"] == i for i, e in got.rows)
        return [i for i, _ in got.rows], got.has_more

    assert await page(None, None) == ([0, 1], True)
    assert await page(1, None) == ([2, 3], True)
    assert await page(3, None) == ([4], False)
    assert await page(None, 4) == ([2, 3], True)
    assert await page(None, 2) == ([0, 1], False)
    assert (
        await store.list_results("", "no-such-job", now=T0, after=None, before=None, size=2) is None
    )


async def test_purge_removes_jobs_past_retention_only(store: Store) -> None:
    row = await submit(store, 2, at=T0)
    await finish(store, await claim(store, T0 + 1), T0 + 2)  # kept until T0+2+RETENTION
    waiting = await submit(store, 1, at=T0 + 3)
    assert await store.purge_expired(T0 + 100) == 0
    assert await store.get_job("", row.id, T0 + 100, INLINE) is not None
    gone = T0 + 2 + RETENTION
    assert await store.get_job("", row.id, gone, INLINE) is None  # expired reads as missing
    assert await store.purge_expired(gone) == 1
    assert await store.get_job("", row.id, T0 + 100, INLINE) is None  # and now it is deleted
    assert (
        await store.list_results("", row.id, now=T0 + 100, after=None, before=None, size=10) is None
    )
    assert await store.job_version("", row.id, T0 + 100) is None
    assert await store.get_job("", waiting.id, gone, INLINE) is not None  # unfinished stays


# -- wake-ups ---------------------------------------------------------------------------------


async def test_wait_for_work_wakes_on_submit_where_the_backend_can_notify(
    backend: Backend, store: Store, open_store: Callable[[], Store]
) -> None:
    if backend.name == "sqlite":
        # Differs by necessity: SQLite has no notifications, so waiting is a plain sleep.
        started = time.monotonic()
        await store.wait_for_work(0.05)
        assert time.monotonic() - started >= 0.05
        return
    assert isinstance(store, PostgresStore)
    assert await store.listening(5.0)
    waiting = asyncio.create_task(store.wait_for_work(30.0))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await submit(open_store(), 1)  # another node: the wake-up crosses connections
    await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - started < 5.0


# -- leads of cluster-wide chores -------------------------------------------------------------


async def test_one_holder_leads_a_chore_until_its_lead_lapses(
    store: Store, open_store: Callable[[], Store]
) -> None:
    other = open_store()  # another process on the same database
    assert await store.try_lead("maintenance", "a", T0, T0 + 5)
    assert await store.try_lead("maintenance", "a", T0 + 1, T0 + 6), "the holder renews"
    assert not await other.try_lead("maintenance", "b", T0 + 2, T0 + 7)
    assert await other.try_lead("purge", "b", T0 + 2, T0 + 7), "each chore has its own lead"
    assert not await other.try_lead("maintenance", "b", T0 + 6, T0 + 11), "not lapsed yet"
    assert await other.try_lead("maintenance", "b", T0 + 6.5, T0 + 11), "lapsed: taken over"
    assert not await store.try_lead("maintenance", "a", T0 + 7, T0 + 12)


async def test_processes_racing_for_a_free_lead_get_exactly_one_holder(
    store: Store, open_store: Callable[[], Store]
) -> None:
    nodes = [store, *(open_store() for _ in range(5))]
    won = await asyncio.gather(
        *(node.try_lead("maintenance", f"p{n}", T0, T0 + 5) for n, node in enumerate(nodes))
    )
    assert sum(won) == 1
