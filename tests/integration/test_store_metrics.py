"""What the store counts for the metrics, on SQLite and PostgreSQL alike: counts of live jobs,
totals kept when jobs are purged (no counter goes down), lapsed leases, and the claims and
finishes that the job-event log lines are written from."""

from __future__ import annotations

import pytest

from joblot.models import JOB_DURATION_BUCKETS, Status
from joblot.store import MetricCounts, Store
from joblot.store.common import duration_bucket

from .test_store import LEASE, RETENTION, T0, TYPES, claim, done, submit

pytestmark = pytest.mark.anyio


def counters(counts: MetricCounts) -> dict[str, float]:
    """The counters as the exposition adds them up: live rows plus the kept totals."""
    found: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        found[key] = found.get(key, 0.0) + value

    for row in counts.jobs:
        add(f"items:{row.job_type}:success", row.succeeded)
        add(f"items:{row.job_type}:failure", row.failed)
        if row.status.finished:
            add(f"jobs:{row.job_type}:{row.status.value}", row.jobs)
    for job_type, bucket, jobs, seconds in counts.durations:
        add(f"duration:{job_type}:{bucket}", jobs)
        add(f"duration_sum:{job_type}", seconds)
    for total in counts.totals:
        if total.name == "items_finished":
            add(f"items:{total.job_type}:{total.label}", total.value)
        elif total.name == "jobs_finished":
            add(f"jobs:{total.job_type}:{total.label}", total.value)
        elif total.name == "job_duration":
            add(f"duration:{total.job_type}:{total.label}", total.value)
        elif total.name == "job_duration_seconds":
            add(f"duration_sum:{total.job_type}", total.value)
        else:
            add(total.name, total.value)
    return {key: value for key, value in found.items() if value}


async def test_counts_come_from_the_jobs_as_they_run(store: Store) -> None:
    await submit(store, 4, at=T0)
    claimed = await claim(store, T0 + 1, limit=3)
    await store.finish_items(
        claimed.lease_id,
        [done(claimed.items[0]), done(claimed.items[1], success=False)],
        message=None,
        final=False,
        now=T0 + 2,
        retention=RETENTION,
    )
    counts = await store.metric_counts(T0 + 2)
    assert counts.leases_active == 1
    assert counts.running == [("demo.echo", 1)]  # 3 claimed, 2 of them finished
    (working,) = counts.jobs
    assert (working.job_type, working.status, working.jobs) == ("demo.echo", Status.WORKING, 1)
    assert (working.succeeded, working.failed, working.waiting) == (1, 1, 1)
    assert counts.durations == []
    lapsed = await store.metric_counts(T0 + 2 + LEASE)
    assert (lapsed.leases_active, lapsed.running) == (0, [])  # lapsed: nothing runs any more


async def test_purging_a_job_keeps_everything_it_counted(store: Store) -> None:
    row = await submit(store, 3, at=T0)
    claimed = await claim(store, T0 + 1)
    items = [done(claimed.items[0]), done(claimed.items[1], success=False), done(claimed.items[2])]
    outcome = await store.finish_items(
        claimed.lease_id, items, message=None, final=True, now=T0 + 7, retention=RETENTION
    )
    assert outcome.finished and outcome.status is Status.COMPLETED
    cancelled = await submit(store, 2, at=T0 + 8)
    await store.stop_job("", cancelled.id, message=None, now=T0 + 9, retention=RETENTION)
    before = counters(await store.metric_counts(T0 + 10))
    assert before == {
        "items:demo.echo:success": 2,
        "items:demo.echo:failure": 1,
        "jobs:demo.echo:completed": 1,
        "jobs:demo.echo:failed": 1,
        f"duration:demo.echo:{duration_bucket(7.0)}": 1,
        f"duration:demo.echo:{duration_bucket(1.0)}": 1,
        "duration_sum:demo.echo": 8.0,
    }
    assert await store.purge_expired(T0 + 9 + RETENTION) == 2
    after = await store.metric_counts(T0 + 9 + RETENTION)
    assert after.jobs == [] and after.durations == []  # every count now comes from the totals
    assert counters(after) == before
    assert await store.get_job("", row.id, T0 + 10, 1000) is None


async def test_durations_are_bucketed_alike_live_and_purged(store: Store) -> None:
    # a duration exactly on a bound belongs to that bound's bucket (le means at most)
    for seconds in (JOB_DURATION_BUCKETS[0], JOB_DURATION_BUCKETS[3] + 0.5, 10 * 86400.0):
        row = await submit(store, 1, at=T0)
        await store.stop_job("", row.id, message=None, now=T0 + seconds, retention=1.0)
    live = counters(await store.metric_counts(T0))
    assert await store.purge_expired(T0 + 11 * 86400) == 3
    assert counters(await store.metric_counts(T0)) == live
    assert live["duration:demo.echo:0"] == 1
    assert live["duration:demo.echo:4"] == 1
    assert live[f"duration:demo.echo:{len(JOB_DURATION_BUCKETS)}"] == 1


async def test_a_lapsed_lease_is_listed_with_its_worker_and_then_counted(store: Store) -> None:
    row = await submit(store, 3, at=T0, tenant="acme")
    claimed = await claim(store, T0, limit=2)
    assert await store.lapsed_leases(T0 + LEASE) == []  # expires at T0+LEASE: not lapsed yet
    (lapsed,) = await store.lapsed_leases(T0 + LEASE + 1)
    assert (lapsed.lease_id, lapsed.worker_id, lapsed.items) == (claimed.lease_id, "worker-1", 2)
    assert (lapsed.job_id, lapsed.job_type, lapsed.tenant) == (row.id, "demo.echo", "acme")
    assert lapsed.job_status is Status.WORKING
    assert await store.requeue_expired(T0 + LEASE + 1, 3, RETENTION) == 2
    assert await store.lapsed_leases(T0 + LEASE + 1) == []
    assert counters(await store.metric_counts(T0 + LEASE + 1)) == {"leases_expired": 1}


async def test_a_released_lease_is_not_counted_as_lapsed(store: Store) -> None:
    await submit(store, 2, at=T0)
    claimed = await claim(store, T0)
    assert await store.release_lease(claimed.lease_id, T0 + 1) == 2
    assert "leases_expired" not in counters(await store.metric_counts(T0 + 1))


async def test_the_first_claim_says_it_started_the_job_and_carries_the_tenant(
    store: Store,
) -> None:
    await submit(store, 2, at=T0, tenant="acme")
    first = await claim(store, T0, limit=1)
    second = await claim(store, T0 + 1, limit=1)
    assert (first.started, first.tenant) == (True, "acme")
    assert (second.started, second.tenant) == (False, "acme")


async def test_only_the_finish_that_ends_the_job_says_it_finished(store: Store) -> None:
    await submit(store, 2, at=T0)
    first = await claim(store, T0, limit=1)
    second = await claim(store, T0, limit=1)
    outcomes = []
    for claimed in (first, second):
        outcomes.append(
            await store.finish_items(
                claimed.lease_id,
                [done(i) for i in claimed.items],
                message=None,
                final=True,
                now=T0 + 1,
                retention=RETENTION,
            )
        )
    assert [o.finished for o in outcomes] == [False, True]
    assert await store.claim_items("w", TYPES, limit=1, now=T0 + 2, lease_seconds=LEASE) is None
