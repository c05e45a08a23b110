"""The webhook outbox in the storage conformance suite, on SQLite and PostgreSQL alike: the
event is queued in the transaction that finishes the job, however it finishes, and due
deliveries are handed to one claimer at a time."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import orjson
import pytest

from joblot.store import AttemptOutcome, DueDelivery, NewJob, Store

from .test_store import LEASE, RETENTION, T0, claim, done, finish, new_job

pytestmark = pytest.mark.anyio

HOOK = "https://hooks.example.com/joblot"
SEND = 30.0  # a delivery's lease


def hooked(items: int = 2, *, tenant: str = "", **kwargs: object) -> NewJob:
    job = new_job(items, tenant=tenant, **kwargs)  # type: ignore[arg-type]
    return dataclasses.replace(job, callback_url=HOOK, public_url="https://jobs.example.com")


async def submit_hooked(store: Store, items: int = 2, tenant: str = "") -> str:
    row, _ = await store.submit_job(hooked(items, tenant=tenant))
    return row.id


async def due(store: Store, now: float, limit: int = 10) -> list[DueDelivery]:
    return await store.claim_deliveries(limit=limit, now=now, lease_seconds=SEND)


def answered(
    d: DueDelivery, code: int | None, state: str, at: float | None = None
) -> AttemptOutcome:
    return AttemptOutcome(d.id, d.attempt, d.lease_token, code, None, state, at)


async def test_completing_a_job_queues_its_event_in_the_same_transaction(store: Store) -> None:
    job_id = await submit_hooked(store)
    plain, _ = await store.submit_job(new_job(1))
    assert await due(store, T0 + 5) == []  # nothing before the job ends
    await finish(store, await claim(store, T0 + 1), T0 + 2)
    await finish(store, await claim(store, T0 + 3), T0 + 4)  # the job without a callback
    (d,) = await due(store, T0 + 5)
    assert (d.job_id, d.url, d.type, d.tenant, d.job_type) == (
        job_id,
        HOOK,
        "job.completed",
        "",
        "demo.echo",
    )
    assert d.id.startswith("msg_") and d.public_url == "https://jobs.example.com"
    assert (d.created_at, d.attempt, d.round_attempt, d.body) == (T0 + 2, 1, 1, None)
    assert await store.list_deliveries("", plain.id, T0 + 5) == []


async def test_every_way_a_job_fails_queues_job_failed(store: Store) -> None:
    cancelled = await submit_hooked(store)
    assert await store.stop_job("", cancelled, message=None, now=T0 + 1, retention=RETENTION)
    aborted = await submit_hooked(store)
    await store.stop_job(None, aborted, message="an admin stopped it", now=T0 + 1, retention=60)
    over = await store.submit_job(dataclasses.replace(hooked(3), max_failures=0))
    c = await claim(store, T0 + 2)
    await store.finish_items(
        c.lease_id,
        [done(c.items[0], success=False)],
        message=None,
        final=False,
        now=T0 + 2,
        retention=RETENTION,
    )
    lost = await submit_hooked(store, 1)
    await claim(store, T0 + 3)
    await store.requeue_expired(T0 + 3 + LEASE + 1, 1, RETENTION)  # WorkerLost, its only item
    found = {d.job_id: d.type for d in await due(store, T0 + 100)}
    assert found == {
        cancelled: "job.failed",
        aborted: "job.failed",
        over[0].id: "job.failed",
        lost: "job.completed",  # an item failed; the job itself completed
    }


async def test_a_claimed_delivery_is_not_handed_out_again_until_its_lease_lapses(
    store: Store, open_store: Callable[[], Store]
) -> None:
    for _ in range(6):
        job_id = await submit_hooked(store, 1)
        await store.stop_job("", job_id, message=None, now=T0, retention=RETENTION)
    other = open_store()
    claims = await asyncio.gather(*(due(node, T0 + 1, 2) for node in [store, other] * 4))
    ids = [d.id for batch in claims for d in batch]
    assert len(ids) == len(set(ids)) == 6
    assert await due(store, T0 + 1 + SEND - 1) == []
    again = await due(store, T0 + 2 + SEND)  # every lease lapsed: each is due once more
    assert sorted(d.id for d in again) == sorted(ids)
    assert {d.attempt for d in again} == {2}
    listed = await store.list_deliveries("", again[0].job_id, T0 + 2 + SEND)
    assert listed is not None
    first, second = listed[0].attempts
    assert first.error is not None and "stopped" in first.error and first.status_code is None
    assert (second.status_code, second.error) == (None, None)  # still running


async def test_an_outcome_under_a_lost_lease_is_recorded_but_decides_nothing(
    store: Store,
) -> None:
    job_id = await submit_hooked(store, 1)
    await store.stop_job("", job_id, message=None, now=T0, retention=RETENTION)
    (late,) = await due(store, T0)
    (current,) = await due(store, T0 + SEND + 1)
    assert not await store.finish_delivery(answered(late, 200, "delivered"), T0 + SEND + 2)
    assert await store.finish_delivery(
        answered(current, 500, "pending", T0 + SEND + 10), T0 + SEND + 2
    )
    (listed,) = await store.list_deliveries("", job_id, T0 + SEND + 3) or []
    assert (listed.state, listed.next_attempt_at) == ("pending", T0 + SEND + 10)
    assert [a.status_code for a in listed.attempts] == [200, 500]
    assert await due(store, T0 + SEND + 9) == []
    (retry,) = await due(store, T0 + SEND + 10)
    assert (retry.attempt, retry.round_attempt) == (3, 3)


async def test_the_event_body_is_kept_from_the_first_attempt(store: Store) -> None:
    job_id = await submit_hooked(store, 1)
    await store.stop_job("", job_id, message=None, now=T0, retention=RETENTION)
    (d,) = await due(store, T0)
    assert await store.keep_delivery_body(d.id, b'{"first": 1}') == b'{"first": 1}'
    assert await store.keep_delivery_body(d.id, b'{"second": 2}') == b'{"first": 1}'
    await store.finish_delivery(answered(d, 503, "pending", T0 + 1), T0)
    (retry,) = await due(store, T0 + 1)
    assert retry.body == b'{"first": 1}'


async def test_redeliver_starts_a_new_round_and_is_tenant_scoped(store: Store) -> None:
    job_id = await submit_hooked(store, 1, tenant="acme")
    await store.stop_job("acme", job_id, message=None, now=T0, retention=RETENTION)
    (d,) = await due(store, T0)
    await store.finish_delivery(answered(d, 410, "failed"), T0)
    assert await store.redeliver("globex", job_id, T0 + 1) is None
    assert await store.list_deliveries("globex", job_id, T0 + 1) is None
    assert await store.redeliver("acme", job_id, T0 + 1) == 1
    (again,) = await due(store, T0 + 1)
    assert (again.id, again.attempt, again.round_attempt) == (d.id, 2, 1)


async def test_a_job_whose_event_was_never_built_outlives_its_retention(store: Store) -> None:
    job_id = await submit_hooked(store, 1)
    await store.stop_job("", job_id, message=None, now=T0, retention=10)
    assert await store.purge_expired(T0 + 20) == 0  # its event still needs it
    (d,) = await due(store, T0 + 20)
    await store.keep_delivery_body(d.id, orjson.dumps({"type": "job.failed"}))
    assert await store.purge_expired(T0 + 21) == 1
    # the delivery goes on without its job, and goes once it ends
    assert await store.finish_delivery(answered(d, 200, "delivered"), T0 + 22)
    assert await due(store, T0 + 100) == []


async def test_secrets_are_created_once_and_rotated_keeping_the_previous_one(
    store: Store,
) -> None:
    first = await store.webhook_secret("acme", "whsec_first", T0, rotate=False)
    assert (first.secret, first.previous, first.rotated_at) == ("whsec_first", None, None)
    same = await store.webhook_secret("acme", "whsec_ignored", T0 + 1, rotate=False)
    assert same == first
    rotated = await store.webhook_secret("acme", "whsec_second", T0 + 2, rotate=True)
    assert (rotated.secret, rotated.previous, rotated.rotated_at) == (
        "whsec_second",
        "whsec_first",
        T0 + 2,
    )
    other = await store.webhook_secret("globex", "whsec_other", T0, rotate=True)
    assert other.secret == "whsec_other" and other.previous is None


async def test_job_callback_is_read_back_only_for_jobs_that_have_one(store: Store) -> None:
    job_id = await submit_hooked(store, 1, tenant="acme")
    plain, _ = await store.submit_job(new_job(1, tenant="acme"))
    assert await store.job_callback("acme", job_id, T0) == (HOOK, "https://jobs.example.com")
    assert await store.job_callback("globex", job_id, T0) is None
    assert await store.job_callback("acme", plain.id, T0) is None
