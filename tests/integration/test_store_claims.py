"""The storage conformance suite for how claims are cut, on SQLite and PostgreSQL alike: sizes
per job type, turns after slow batches, and items on their last attempt leased alone."""

from __future__ import annotations

from dataclasses import replace

import pytest

from joblot.models import Status
from joblot.store import Claim, Pace, RetryLater, Store

from .test_store import RETENTION, T0, TYPES, done, get, new_job, submit

pytestmark = pytest.mark.anyio

LEASE = 30.0


async def claim_at(
    store: Store,
    now: float,
    *,
    limit: int = 10,
    paces: dict[str, Pace] | None = None,
    max_attempts: int | None = None,
) -> Claim | None:
    return await store.claim_items(
        "w",
        [*TYPES, "demo.sleep"],
        limit=limit,
        now=now,
        lease_seconds=LEASE,
        paces=paces,
        max_attempts=max_attempts,
    )


async def test_a_claim_takes_as_many_items_as_its_types_pace(store: Store) -> None:
    await submit(store, 20)
    claimed = await claim_at(store, T0, limit=3, paces={"demo.echo": Pace(7)})
    assert claimed is not None and len(claimed.items) == 7
    claimed = await claim_at(store, T0 + 1, limit=3, paces={"demo.sleep": Pace(7)})
    assert claimed is not None and len(claimed.items) == 3  # no pace for its type: the limit


async def test_after_a_slow_batch_the_other_jobs_get_turns_until_its_time_is_up(
    store: Store,
) -> None:
    slow, _ = await store.submit_job(replace(new_job(20), job_type="demo.sleep"))
    fast = await submit(store, 20, at=T0 + 0.001)
    paces = {"demo.sleep": Pace(2, seconds=1.0), "demo.echo": Pace(2, seconds=0.001)}
    order = []
    for step in range(6):
        claimed = await claim_at(store, T0 + step * 0.1, paces=paces)
        assert claimed is not None
        order.append(claimed.job_id)
    # the slow job's batch is worth 1 s: its next turn comes 2 s later, the fast job's at once
    assert order[0] == slow.id
    assert order[1:] == [fast.id] * 5
    # once the fast job's turn comes later than the slow job's (T0 + 2), the slow one is next
    later = [await claim_at(store, T0 + 2.5 + step * 0.1, paces=paces) for step in range(2)]
    assert [c.job_id if c else None for c in later] == [fast.id, slow.id]


async def lose(store: Store, now: float) -> None:
    """The worker holding the leases vanished: they lapse and are requeued."""
    await store.requeue_expired(now + LEASE + 1, 3, RETENTION)


async def test_items_whose_worker_vanished_twice_are_then_claimed_one_at_a_time(
    store: Store,
) -> None:
    await submit(store, 6)
    first = await claim_at(store, T0, limit=4, max_attempts=3)
    assert first is not None and [i.index for i in first.items] == [0, 1, 2, 3]
    await lose(store, T0)
    second = await claim_at(store, T0 + 40, limit=10, max_attempts=3)
    assert second is not None  # one loss: claimed together again, on their second attempt
    assert [(i.index, i.attempt) for i in second.items] == [
        (0, 2),
        (1, 2),
        (2, 2),
        (3, 2),
        (4, 1),
        (5, 1),
    ]
    await lose(store, T0 + 40)
    for n, index in enumerate([0, 1, 2, 3]):  # their last attempt: each alone
        alone = await claim_at(store, T0 + 80 + n, limit=10, max_attempts=3)
        assert alone is not None
        assert [(i.index, i.attempt) for i in alone.items] == [(index, 3)]
    rest = await claim_at(store, T0 + 90, limit=10, max_attempts=3)
    assert rest is not None and [(i.index, i.attempt) for i in rest.items] == [(4, 2), (5, 2)]


async def test_an_item_to_retry_waits_unleased_and_does_not_hold_up_other_jobs(
    store: Store,
) -> None:
    first = await submit(store, 2)
    claimed = await claim_at(store, T0, max_attempts=3)
    assert claimed is not None and claimed.job_id == first.id
    outcome = await store.finish_items(
        claimed.lease_id,
        [done(claimed.items[0])],
        message=None,
        final=True,
        now=T0 + 1,
        retention=RETENTION,
        later=[RetryLater(1, 10.0)],  # due at T0 + 11
    )
    assert outcome.accepted and outcome.status is Status.WORKING
    other = await submit(store, 1, at=T0 + 2)
    assert await claim_at(store, T0 + 3) is not None  # the other job's item, not the waiting one
    assert await claim_at(store, T0 + 4) is None  # nothing due: the waiting item is passed over
    again = await claim_at(store, T0 + 11, max_attempts=3)
    assert again is not None and again.job_id == first.id
    # its handler's failure spent no attempt (its worker did not vanish), and it was retried once
    assert [(i.index, i.attempt, i.retries) for i in again.items] == [(1, 1, 1)]
    await store.finish_items(
        again.lease_id,
        [done(again.items[0])],
        message=None,
        final=True,
        now=T0 + 12,
        retention=RETENTION,
    )
    assert (await get(store, first.id, T0 + 12)).status is Status.COMPLETED
    assert other.id != first.id
