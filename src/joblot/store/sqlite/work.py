"""SQLite: what workers do — claim a batch, finish its items, renew and release leases.

Every function runs on the writer thread with its connection; each write is one
transaction, and SQLite's single writer is the lock that keeps them apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

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
from joblot.store.common import Refused, worker_lost
from joblot.store.sqlite.connection import (
    SQL,
    Conn,
    fetch_all,
    fetch_one,
    lock_state,
    rowcount,
    save_state,
    transaction,
)


def claim_items(
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
    its last attempt alone."""
    # A cheap read first: an idle worker polling an idle database (or one whose only jobs
    # wait on a limit, and already say so) takes no write lock.
    choice = _choose(conn, job_types, limit=limit, now=now, limits=limits, paces=paces)
    if choice.job is None and not _messages_due(conn, choice):
        return None
    with transaction(conn):
        choice = _choose(conn, job_types, limit=limit, now=now, limits=limits, paces=paces)
        for job_id, text in choice.held_back:
            _throttle(conn, job_id, text, now)
        if choice.job is None:
            return None
        job_id, job_type, tenant = choice.job
        lease = {
            "job_id": job_id,
            "worker_id": worker_id,
            "expires_at": now + lease_seconds,
            "job_type": job_type,
            "slots": choice.slots,
        }
        lease_id = conn.execute(SQL["claim_items.insert_lease"], lease).lastrowid
        assert lease_id is not None
        params = {
            "job_id": job_id,
            "lease_id": lease_id,
            "limit": choice.size,
            "last": last_attempt(max_attempts),
            "now": now,
        }
        rows = fetch_all(conn, "claim_items.last_attempt", params)
        if not rows:
            rows = fetch_all(conn, "claim_items.lease_items", params)
        _count_start(conn, choice, len(rows), now)
        old = lock_state(conn, job_id)
        assert old is not None  # picked in this very transaction
        new = after_claim(old, len(rows))
        if choice.throttle is not None and new.pending > 0:
            new = after_throttle(new, choice.throttle)
        turn = next_turn(now, choice.pace, len(rows))
        save_state(conn, job_id, old, new, now=now, retention=0.0, claimed_at=now, turn=turn)
    items = [ClaimedItem(i, p, a, r) for i, p, a, r in sorted(rows)]
    return Claim(
        lease_id=lease_id,
        job_id=job_id,
        job_type=job_type,
        items=items,
        tenant=tenant,
        started=old.status is not new.status,
        slots=choice.slots,
    )


def _choose(
    conn: Conn,
    job_types: list[str],
    *,
    limit: int,
    now: float,
    limits: TypeLimits,
    paces: Mapping[str, Pace] | None,
) -> Choice:
    """The least recently served runnable job of a type with room, skipping the types whose
    limit is reached (their next job is held back) or that this worker has no room for."""
    skipped = {t for t in limits.by_type if limits.free <= 0}
    waiting: list[str] = []  # jobs whose pending items all wait to be retried later
    held_back: list[tuple[str, str]] = []
    while True:
        wanted = [t for t in job_types if t not in skipped]
        if not wanted:
            return Choice(held_back=held_back)
        params = {
            "job_types": orjson.dumps(wanted).decode(),
            "skip_jobs": orjson.dumps(waiting).decode(),
        }
        picked = fetch_one(conn, "claim_items.pick_job", params)
        if picked is None:
            return Choice(held_back=held_back)
        job_id, job_type, tenant = picked
        if fetch_one(conn, "claim_items.has_due", {"job_id": job_id, "now": now}) is None:
            waiting.append(job_id)
            continue
        size = claim_size(job_type, limit, paces)
        pace = None if paces is None else paces.get(job_type)
        rule = limits.by_type.get(job_type)
        if rule is None:
            return Choice((job_id, job_type, tenant), size, None, held_back, None, pace)
        skipped.add(job_type)
        counts = _counts(conn, rule, job_type, now, limits)
        given = share(rule, job_type, size, limits, **counts)
        if given.size > 0:
            job = (job_id, job_type, tenant)
            return Choice(job, given.size, given.text, held_back, rule, pace, given.slots)
        assert given.text is not None
        held_back.append((job_id, given.text))


def _counts(
    conn: Conn, rule: Limit, job_type: str, now: float, limits: TypeLimits
) -> dict[str, int]:
    """What a limited type's limits count: the slots its live leases hold (the claiming
    worker's own as it says), its items started in the period."""
    running = started = 0
    if rule.concurrency is not None:
        leases, held = own_leases(limits, job_type)
        params = {"job_type": job_type, "now": now, "own": orjson.dumps(leases).decode()}
        (others,) = fetch_one(conn, "claim_items.running", params)
        running = others + held
    if rule.rate is not None:
        since = {"job_type": job_type, "since": now - rule.per}
        (started,) = fetch_one(conn, "claim_items.started", since)
    return {"running": running, "started": started}


def _count_start(conn: Conn, choice: Choice, count: int, now: float) -> None:
    """Note the items a claim of a rate-limited type started, and forget those out of the
    period."""
    rule = choice.rule
    if rule is None or rule.rate is None or count == 0 or choice.job is None:
        return
    job_type = choice.job[1]
    rowcount(conn, "claim_items.forget_starts", {"job_type": job_type, "since": now - rule.per})
    params = {"job_type": job_type, "now": now, "count": count}
    rowcount(conn, "claim_items.record_start", params)


def _messages_due(conn: Conn, choice: Choice) -> bool:
    """Whether a held-back job's message does not say so yet."""
    return any(
        needs_throttle_message(fetch_one(conn, "claim_items.throttled", {"id": job_id}), text)
        for job_id, text in choice.held_back
    )


def _throttle(conn: Conn, job_id: str, text: str, now: float) -> None:
    """A job held back by its type's limit says so in its message."""
    if not needs_throttle_message(fetch_one(conn, "claim_items.throttled", {"id": job_id}), text):
        return
    old = lock_state(conn, job_id)
    if old is not None:
        save_state(conn, job_id, old, after_throttle(old, text), now=now, retention=0.0)


def finish_items(
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
        with transaction(conn):
            lease = fetch_one(conn, "finish_items.lease", {"lease_id": lease_id})
            if lease is None or lease[1] < now:
                raise Refused()
            job_id = lease[0]
            record(conn, job_id, lease_id, items)
            _retry_later(conn, job_id, lease_id, later, now)
            old = lock_state(conn, job_id)
            if old is None:  # purged while this lease was out
                raise Refused()
            failed = sum(1 for it in items if not it.success)
            new = after_requeue(stopped(old, abort), len(later))
            new = after_finish(new, len(items), failed, message, now)
            save_state(conn, job_id, old, new, now=now, retention=retention)
            if final:
                rowcount(conn, "leases.release_if_done", {"lease_id": lease_id})
    except Refused:
        return FinishOutcome(accepted=False)
    finished = new.status.finished and not old.status.finished
    return FinishOutcome(accepted=True, status=new.status, finished=finished)


def record(conn: Conn, job_id: str, lease_id: int, items: list[FinishedItem]) -> None:
    """Take the items off the queue and store their results (a failed one with its payload);
    Refused unless all were held."""
    failed = [it for it in items if not it.success]
    if failed:  # copied before the items are taken: the payload goes beside the result
        kept = conn.executemany(
            SQL["finish_items.insert_failure"],
            ((it.entry, job_id, it.index, lease_id) for it in failed),
        ).rowcount
        if kept != len(failed):
            raise Refused()
    taken = conn.executemany(
        SQL["finish_items.take_item"], ((job_id, it.index, lease_id) for it in items)
    ).rowcount
    if taken != len(items):
        raise Refused()
    conn.executemany(
        SQL["finish_items.insert_result"],
        ((job_id, it.index, 1, it.entry) for it in items if it.success),
    )


def _retry_later(
    conn: Conn, job_id: str, lease_id: int, later: Sequence[RetryLater], now: float
) -> None:
    """Put items back in the queue, due after their delays; Refused unless all were held."""
    if not later:
        return
    rows = ((now + it.delay, job_id, it.index, lease_id) for it in later)
    if conn.executemany(SQL["finish_items.retry_later"], rows).rowcount != len(later):
        raise Refused()


def renew_leases(conn: Conn, lease_ids: list[int], now: float, until: float) -> set[int]:
    """Extend the leases still held; a lapsed one is not revived."""
    params = {"lease_ids": orjson.dumps(lease_ids).decode(), "now": now, "until": until}
    with transaction(conn):
        rows = fetch_all(conn, "renew_leases", params)
    return {r[0] for r in rows}


def release_lease(conn: Conn, lease_id: int, now: float) -> int:
    """Give back the unstarted items of a lease at once (a worker stopping cleanly)."""
    with transaction(conn):
        lease = fetch_one(conn, "finish_items.lease", {"lease_id": lease_id})
        if lease is None:
            return 0
        rowcount(conn, "release_lease.refund", {"lease_id": lease_id})
        return requeue_lease(
            conn, lease_id, lease[0], now=now, max_attempts=NO_ATTEMPT_LIMIT, retention=0.0
        )


def requeue_lease(
    conn: Conn, lease_id: int, job_id: str, *, now: float, max_attempts: int, retention: float
) -> int:
    """Return one lease's items to the queue (in the caller's transaction), failing those out
    of attempts with WorkerLost, and drop the lease; the number of items it held."""
    lease = {"lease_id": lease_id}
    rows = fetch_all(conn, "requeue_expired.items", lease)
    spent = [(i, p, a) for i, p, a in rows if a >= max_attempts]
    requeued = rowcount(conn, "requeue_expired.requeue", {**lease, "max_attempts": max_attempts})
    rowcount(conn, "leases.release", lease)
    old = lock_state(conn, job_id)
    if old is None:  # the job was purged while its lease was out: nothing to return to
        return len(rows)
    new = after_requeue(old, requeued)
    if spent:
        (action,) = fetch_one(conn, "requeue_expired.job_action", {"id": job_id})
        record(conn, job_id, lease_id, [worker_lost(i, p, action, a) for i, p, a in spent])
        new = after_finish(new, len(spent), len(spent), None, now)
    save_state(conn, job_id, old, new, now=now, retention=retention)
    return len(rows)
