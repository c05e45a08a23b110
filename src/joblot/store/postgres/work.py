"""PostgreSQL: what workers do — claim a batch, finish its items, renew and release leases.

Each function takes an autocommit connection and opens its own transactions, keeping the
lock order of `connection.py`: a lease's items, then the job row, then lease rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from joblot.models import Limit, after_claim, after_finish, after_requeue, after_throttle, stopped
from joblot.store import (
    NO_LIMITS,
    Claim,
    ClaimedItem,
    FinishedItem,
    FinishOutcome,
    Pace,
    RetryLater,
    TypeLimits,
)
from joblot.store.claims import (
    NO_ATTEMPT_LIMIT,
    Choice,
    claim_size,
    last_attempt,
    needs_throttle_message,
    next_turn,
    own_leases,
    share,
)
from joblot.store.common import LEASES_EXPIRED, Refused, total_params, worker_lost
from joblot.store.postgres.connection import (
    Conn,
    fetch_all,
    fetch_one,
    lock_state,
    rowcount,
    save_state,
)

# A claim that found work only in limited types other claims were serving tries again after
# these pauses (seconds) before it answers None and its worker waits for a poll or a NOTIFY.
BUSY_PAUSES = (0.002, 0.005, 0.01, 0.02, 0.05)


async def claim_items(
    conn: Conn,
    worker_id: str,
    job_types: list[str],
    *,
    limit: int,
    now: float,
    lease_seconds: float,
    limits: TypeLimits = NO_LIMITS,
    paces: Mapping[str, Pace] | None = None,
    max_attempts: int | None = None,
) -> Claim | None:
    """Lease items of the runnable job whose turn it is and whose type's limits leave room:
    as many as its type's pace allows (`limit` for a type without one), or its first item on
    its last attempt alone.

    The job is picked without a lock and its items are leased with SKIP LOCKED, so claims of
    one job by many workers run side by side; the job row is locked last, only to count the
    claim, as finishes do. A claim that leased nothing, or whose job stopped meanwhile, rolls
    back and answers None. Claims of one limited type take turns (claim_items.lock_type); a
    claim that found work only in such types while others served them tries again after each
    of BUSY_PAUSES, holding no lock in between.
    """
    # The cheap read first: an idle worker on an idle database opens no transaction.
    params = {"job_types": job_types, "now": now}
    found = await fetch_one(conn, "claim_items.any_runnable", params)
    if found is None or not found[0]:
        return None
    began, at = time.monotonic(), now
    for pause in (*BUSY_PAUSES, None):
        try:
            async with conn.transaction():
                choice = await _choose(
                    conn, job_types, limit=limit, now=at, limits=limits, paces=paces
                )
                for job_id, text in choice.held_back:
                    await _throttle(conn, job_id, text, at)
                if choice.job is not None:
                    return await _lease(
                        conn,
                        worker_id,
                        choice,
                        now=at,
                        lease_seconds=lease_seconds,
                        last=last_attempt(max_attempts),
                    )
        except Refused:  # another worker took the items, or the job stopped: try again
            return None
        if not choice.busy or pause is None:
            return None
        # Only a limited type that another claim was serving had work: that claim commits
        # within milliseconds, and the room it leaves is this worker's to take, not something
        # to wait a poll interval for.
        await asyncio.sleep(pause)
        at = now + (time.monotonic() - began)
    return None


async def _lease(
    conn: Conn, worker_id: str, choice: Choice, *, now: float, lease_seconds: float, last: int
) -> Claim:
    assert choice.job is not None
    job_id, job_type, tenant = choice.job
    lease = await fetch_one(
        conn,
        "claim_items.insert_lease",
        {
            "job_id": job_id,
            "worker_id": worker_id,
            "expires_at": now + lease_seconds,
            "job_type": job_type,
            "slots": choice.slots,
        },
    )
    assert lease is not None
    params = {
        "job_id": job_id,
        "lease_id": lease[0],
        "limit": choice.size,
        "last": last,
        "now": now,
    }
    await rowcount(conn, "claim_items.by_index")
    rows = await fetch_all(conn, "claim_items.last_attempt", params)
    if not rows:
        rows = await fetch_all(conn, "claim_items.lease_items", params)
    await _count_start(conn, choice, len(rows), now)
    state = await lock_state(conn, job_id)
    if not rows or state is None or state.status.finished:
        raise Refused()
    new = after_claim(state, len(rows))
    if choice.throttle is not None and new.pending > 0:
        new = after_throttle(new, choice.throttle)
    turn = next_turn(now, choice.pace, len(rows))
    await save_state(conn, job_id, state, new, now=now, retention=0.0, claimed_at=now, turn=turn)
    items = [ClaimedItem(i, p, a, r) for i, p, a, r in sorted(rows)]
    return Claim(
        lease_id=lease[0],
        job_id=job_id,
        job_type=job_type,
        items=items,
        tenant=tenant,
        started=state.status is not new.status,
        slots=choice.slots,
    )


async def _choose(
    conn: Conn,
    job_types: list[str],
    *,
    limit: int,
    now: float,
    limits: TypeLimits,
    paces: Mapping[str, Pace] | None,
) -> Choice:
    """The least recently served runnable job of a type with room, skipping the types whose
    limit is reached (their next job is held back), that another claim is serving right now,
    or that this worker has no room for."""
    skipped = {t for t in limits.by_type if limits.free <= 0}
    waiting: list[str] = []  # jobs whose pending items all wait to be retried later
    held_back: list[tuple[str, str]] = []
    busy = False  # a type with work was left to the claim serving it
    while True:
        wanted = [t for t in job_types if t not in skipped]
        if not wanted:
            return Choice(held_back=held_back, busy=busy)
        params = {"job_types": wanted, "skip_jobs": waiting}
        picked = await fetch_one(conn, "claim_items.pick_job", params)
        if picked is None:
            return Choice(held_back=held_back, busy=busy)
        job_id, job_type, tenant = picked
        if await fetch_one(conn, "claim_items.has_due", {"job_id": job_id, "now": now}) is None:
            waiting.append(job_id)
            continue
        size = claim_size(job_type, limit, paces)
        pace = None if paces is None else paces.get(job_type)
        rule = limits.by_type.get(job_type)
        if rule is None:
            return Choice((job_id, job_type, tenant), size, None, held_back, None, pace)
        skipped.add(job_type)
        locked = await fetch_one(conn, "claim_items.lock_type", {"job_type": job_type})
        if locked is None or not locked[0]:
            busy = True  # another claim is serving this type: leave it to that one
            continue
        counts = await _counts(conn, rule, job_type, now, limits)
        given = share(rule, job_type, size, limits, **counts)
        if given.size > 0:
            job = (job_id, job_type, tenant)
            return Choice(job, given.size, given.text, held_back, rule, pace, given.slots)
        assert given.text is not None
        held_back.append((job_id, given.text))


async def _counts(
    conn: Conn, rule: Limit, job_type: str, now: float, limits: TypeLimits
) -> dict[str, int]:
    """What a limited type's limits count: the slots its live leases hold (the claiming
    worker's own as it says), its items started in the period."""
    running = started = 0
    if rule.concurrency is not None:
        leases, held = own_leases(limits, job_type)
        params = {"job_type": job_type, "now": now, "own": leases}
        found = await fetch_one(conn, "claim_items.running", params)
        running = (0 if found is None else int(found[0])) + held
    if rule.rate is not None:
        since = {"job_type": job_type, "since": now - rule.per}
        found = await fetch_one(conn, "claim_items.started", since)
        started = 0 if found is None else int(found[0])
    return {"running": running, "started": started}


async def _count_start(conn: Conn, choice: Choice, count: int, now: float) -> None:
    """Note the items a claim of a rate-limited type started, and forget those out of the
    period."""
    rule = choice.rule
    if rule is None or rule.rate is None or count == 0 or choice.job is None:
        return
    job_type = choice.job[1]
    await rowcount(
        conn, "claim_items.forget_starts", {"job_type": job_type, "since": now - rule.per}
    )
    params = {"job_type": job_type, "now": now, "count": count}
    await rowcount(conn, "claim_items.record_start", params)


async def _throttle(conn: Conn, job_id: str, text: str, now: float) -> None:
    """A job held back by its type's limit says so in its message."""
    row = await fetch_one(conn, "claim_items.throttled", {"id": job_id})
    if not needs_throttle_message(row, text):
        return
    old = await lock_state(conn, job_id)
    if old is not None:
        await save_state(conn, job_id, old, after_throttle(old, text), now=now, retention=0.0)


async def finish_items(
    conn: Conn,
    lease_id: int,
    items: list[FinishedItem],
    *,
    message: str | None,
    final: bool,
    now: float,
    retention: float,
    abort: str | None = None,
    later: Sequence[RetryLater] = (),
) -> FinishOutcome:
    """Record results if the lease is still held; otherwise refuse them all. With `abort`, the
    job fails with that message first (unless it finished already), so that these results,
    though they may be its last, cannot complete it. The items `later` go back to the queue,
    due after their delays."""
    try:
        async with conn.transaction():
            lease = await fetch_one(conn, "finish_items.lease", {"lease_id": lease_id})
            if lease is None or lease[1] < now:
                raise Refused()
            job_id = lease[0]
            # Items and results first, the job row last: many workers finishing items of one
            # job then hold its row only for the final few statements, not the whole transaction.
            await _lock_all(conn, job_id, lease_id, items, later)
            await record(conn, job_id, lease_id, items)
            await _retry_later(conn, job_id, lease_id, later, now)
            old = await lock_state(conn, job_id)
            if old is None:
                raise Refused()  # the job is gone: past its retention and purged
            held = {"lease_id": lease_id, "now": now}
            if await fetch_one(conn, "finish_items.lease_held", held) is None:
                raise Refused()  # requeued or released while this waited for the row
            failed = sum(1 for it in items if not it.success)
            new = after_requeue(stopped(old, abort), len(later))
            new = after_finish(new, len(items), failed, message, now)
            await save_state(conn, job_id, old, new, now=now, retention=retention)
            if final:
                await rowcount(conn, "leases.release_if_done", {"lease_id": lease_id})
    except Refused:
        return FinishOutcome(accepted=False)
    finished = new.status.finished and not old.status.finished
    return FinishOutcome(accepted=True, status=new.status, finished=finished)


async def record(conn: Conn, job_id: str, lease_id: int, items: list[FinishedItem]) -> None:
    """Take the items off the queue and store their results (a failed one with its payload);
    Refused unless all were held."""
    if not items:
        return
    params = {
        "job_id": job_id,
        "lease_id": lease_id,
        "idx": [it.index for it in items],
        "success": [it.success for it in items],
        "entry": [it.entry for it in items],
    }
    if await rowcount(conn, "finish_items.record", params) != len(items):
        raise Refused()


async def _lock_all(
    conn: Conn,
    job_id: str,
    lease_id: int,
    items: list[FinishedItem],
    later: Sequence[RetryLater],
) -> None:
    """With items to retry, lock every item of the finish first, in index order."""
    if later:
        idx = sorted([it.index for it in items] + [it.index for it in later])
        params = {"job_id": job_id, "lease_id": lease_id, "idx": idx}
        await fetch_all(conn, "finish_items.lock_all", params)


async def _retry_later(
    conn: Conn, job_id: str, lease_id: int, later: Sequence[RetryLater], now: float
) -> None:
    """Put items back in the queue, due after their delays; Refused unless all were held."""
    if not later:
        return
    params = {
        "job_id": job_id,
        "lease_id": lease_id,
        "idx": [it.index for it in later],
        "due_at": [now + it.delay for it in later],
    }
    if await rowcount(conn, "finish_items.retry_later", params) != len(later):
        raise Refused()


async def renew_leases(conn: Conn, lease_ids: list[int], now: float, until: float) -> set[int]:
    """Extend the leases still held; a lapsed one is not revived."""
    params = {"lease_ids": lease_ids, "now": now, "until": until}
    return {r[0] for r in await fetch_all(conn, "renew_leases", params)}


async def release_lease(conn: Conn, lease_id: int, now: float) -> int:
    """Give back the unstarted items of a lease at once (a worker stopping cleanly)."""
    lease = await fetch_one(conn, "finish_items.lease", {"lease_id": lease_id})
    if lease is None:
        return 0
    try:
        async with conn.transaction():
            return await _release_held_lease(conn, lease_id, lease[0], now)
    except Refused:
        return 0


async def _release_held_lease(conn: Conn, lease_id: int, job_id: str, now: float) -> int:
    params = {"lease_id": lease_id, "now": now}
    rows = await fetch_all(conn, "requeue_expired.items", params)  # locks them, in index order
    await rowcount(conn, "release_lease.refund", params)
    await rowcount(conn, "requeue_expired.requeue", {**params, "max_attempts": NO_ATTEMPT_LIMIT})
    return await _settle(
        conn, params, job_id, held=len(rows), spent=0, check="release_lease.held", retention=0.0
    )


async def requeue_lapsed_lease(
    conn: Conn, lease_id: int, job_id: str, *, now: float, max_attempts: int, retention: float
) -> int:
    """Requeue one lapsed lease's items in a transaction of its own, failing those out of
    attempts with WorkerLost; 0 if another process took the lease meanwhile."""
    try:
        async with conn.transaction():
            params = {"lease_id": lease_id, "now": now}
            taken = await fetch_one(conn, "requeue_expired.try_lock", params)
            if taken is None or not taken[0]:
                raise Refused()  # another node is requeueing this lease right now
            rows = await fetch_all(conn, "requeue_expired.items", params)  # locked, in order
            spent = [(i, p, a) for i, p, a in rows if a >= max_attempts]
            await rowcount(
                conn, "requeue_expired.requeue", {**params, "max_attempts": max_attempts}
            )
            if spent:
                found = await fetch_one(conn, "requeue_expired.job_action", {"id": job_id})
                action = None if found is None else found[0]
                lost = [worker_lost(i, p, action, a) for i, p, a in spent]
                await record(conn, job_id, lease_id, lost)
            held = await _settle(
                conn,
                params,
                job_id,
                held=len(rows),
                spent=len(spent),
                check="requeue_expired.lapsed",
                retention=retention,
            )
            await rowcount(conn, "metric_totals.add", total_params(LEASES_EXPIRED))
            return held
    except Refused:
        return 0


async def _settle(
    conn: Conn,
    lease: dict[str, Any],
    job_id: str,
    *,
    held: int,
    spent: int,
    check: str,
    retention: float,
) -> int:
    """Drop the lease and count what came back, once the job row is locked and the lease is
    still as the caller found it (`check`)."""
    old = await lock_state(conn, job_id)
    if old is not None and await fetch_one(conn, check, lease) is None:
        raise Refused()  # renewed, finished or released while this waited
    await rowcount(conn, "leases.release", lease)
    if old is None:
        return held  # the job was purged while the lease was out: drop the lease
    new = after_requeue(old, held - spent)  # the items are locked: all but the spent went back
    if spent:
        new = after_finish(new, spent, spent, None, lease["now"])
    await save_state(conn, job_id, old, new, now=lease["now"], retention=retention)
    if new.pending > old.pending:
        await rowcount(conn, "work.notify")
    return held
