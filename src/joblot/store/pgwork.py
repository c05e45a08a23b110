"""The PostgreSQL write transactions of the job lifecycle, as functions over one connection.

Lock order, kept by every function here so that no two transactions deadlock: a lease's
items (in index order), then the job row, then lease rows. A claim locks the job row first,
but it only ever skips locked items, so it never waits while holding the row.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg.rows import TupleRow

from joblot.errors import JobFinished
from joblot.models import (
    JobState,
    after_claim,
    after_finish,
    after_requeue,
    after_stop,
    failure_entry,
)
from joblot.store import Claim, ClaimedItem, Finish, FinishedItem, job_state, state_params
from joblot.store.pgsubmit import queries

Conn = psycopg.AsyncConnection[TupleRow]
Row = tuple[Any, ...]


class Refused(Exception):
    """Rolls back a transaction whose lease is no longer held as it must be."""


async def fetch_one(conn: Conn, name: str, params: dict[str, Any] | None = None) -> Row | None:
    """The first row of the named query."""
    return await (await conn.execute(queries()[name], params)).fetchone()


async def fetch_all(conn: Conn, name: str, params: dict[str, Any] | None = None) -> list[Row]:
    """Every row of the named query."""
    return await (await conn.execute(queries()[name], params)).fetchall()


async def run(conn: Conn, name: str, params: dict[str, Any] | None = None) -> int:
    """Run the named statement; the number of rows it changed."""
    return (await conn.execute(queries()[name], params)).rowcount


async def lock_state(conn: Conn, job_id: str) -> JobState | None:
    """Lock the job row until commit and read its counters; None if the job was purged."""
    row = await fetch_one(conn, "job_state.select", {"id": job_id})
    return None if row is None else job_state(row)


async def save_state(
    conn: Conn,
    job_id: str,
    old: JobState,
    new: JobState,
    now: float,
    retention: float,
    claimed_at: float | None = None,
) -> None:
    """Write back what the lifecycle rules decided; bump the version if anyone can see it."""
    await run(conn, "job_state.save", state_params(job_id, old, new, now, retention, claimed_at))


async def stop(
    conn: Conn, tenant: str | None, job_id: str, message: str | None, now: float, retention: float
) -> bool:
    """Fail an unfinished job (in the caller's transaction); False if there is no such job."""
    if tenant is None:
        row = await fetch_one(conn, "job_state.select", {"id": job_id})
    else:
        params = {"id": job_id, "tenant": tenant, "now": now}
        row = await fetch_one(conn, "job_state.select_for_tenant", params)
    if row is None:
        return False
    old = job_state(row)
    if old.status.finished:
        raise JobFinished(
            f"job {job_id} is already {old.status.value}; "
            "only queued or working jobs can be stopped"
        )
    await save_state(conn, job_id, old, after_stop(old, message), now, retention)
    return True


async def claim(
    conn: Conn, worker_id: str, job_types: list[str], limit: int, now: float, lease_seconds: float
) -> Claim | None:
    """Lease up to `limit` items of the least recently served runnable job (in a transaction).

    The job is picked without a lock and its items are leased with SKIP LOCKED, so claims of
    one job by many workers run side by side; the job row is locked last, only to count the
    claim, as finishes do. Raises Refused (the caller rolls back) when nothing was leased or
    the job stopped meanwhile.
    """
    picked = await fetch_one(conn, "claim_items.pick_job", {"job_types": job_types})
    if picked is None:
        return None
    job_id, job_type = picked
    lease = await fetch_one(
        conn,
        "claim_items.insert_lease",
        {"job_id": job_id, "worker_id": worker_id, "expires_at": now + lease_seconds},
    )
    assert lease is not None
    rows = await fetch_all(
        conn, "claim_items.lease_items", {"job_id": job_id, "lease_id": lease[0], "limit": limit}
    )
    state = await lock_state(conn, job_id)
    if not rows or state is None or state.status.finished:
        raise Refused()
    await save_state(conn, job_id, state, after_claim(state, len(rows)), now, 0.0, claimed_at=now)
    items = [ClaimedItem(i, p, a) for i, p, a in sorted(rows)]
    return Claim(lease[0], job_id, job_type, items)


async def finish(
    conn: Conn,
    lease_id: int,
    items: list[FinishedItem],
    message: str | None,
    final: bool,
    now: float,
    retention: float,
) -> Finish:
    """Record results under a lease (in a transaction); raise Refused unless it is held."""
    lease = await fetch_one(conn, "finish_items.lease", {"lease_id": lease_id})
    if lease is None or lease[1] < now:
        raise Refused()
    job_id = lease[0]
    # Items and results first, the job row last: many workers finishing items of one job
    # then hold its row only for the final few statements, not the whole transaction.
    await record(conn, job_id, lease_id, items)
    old = await lock_state(conn, job_id)
    if old is None:
        raise Refused()  # the job is gone: past its retention and purged
    if await fetch_one(conn, "finish_items.lease_held", {"lease_id": lease_id, "now": now}) is None:
        raise Refused()  # requeued or released while this waited for the row
    failed = sum(1 for it in items if not it.success)
    new = after_finish(old, len(items), failed, message, now)
    await save_state(conn, job_id, old, new, now, retention)
    if final:
        await run(conn, "leases.release_if_done", {"lease_id": lease_id})
    return Finish(accepted=True, job_status=new.status)


async def record(conn: Conn, job_id: str, lease_id: int, items: list[FinishedItem]) -> None:
    """Take the items off the queue and store their results; Refused unless all were held."""
    if not items:
        return
    indexes = [it.index for it in items]
    taken = await run(
        conn, "finish_items.take_items", {"job_id": job_id, "idx": indexes, "lease_id": lease_id}
    )
    if taken != len(items):
        raise Refused()
    await run(
        conn,
        "finish_items.insert_results",
        {
            "job_id": job_id,
            "idx": indexes,
            "success": [it.success for it in items],
            "entry": [it.entry for it in items],
        },
    )


async def requeue_lease(
    conn: Conn,
    lease_id: int,
    job_id: str,
    now: float,
    max_attempts: int,
    retention: float,
    releasing: bool,
) -> int:
    """Requeue one lease's items in a transaction of its own; 0 if it was taken meanwhile."""
    try:
        async with conn.transaction():
            return await _requeue_held_lease(
                conn, lease_id, job_id, now, max_attempts, retention, releasing
            )
    except Refused:
        return 0


async def _requeue_held_lease(
    conn: Conn,
    lease_id: int,
    job_id: str,
    now: float,
    max_attempts: int,
    retention: float,
    releasing: bool,
) -> int:
    lease = {"lease_id": lease_id, "now": now}
    if not releasing:
        taken = await fetch_one(conn, "requeue_expired.try_lock", lease)
        if taken is None or not taken[0]:
            raise Refused()  # another node is requeueing this lease right now
    count, requeued, spent = await _take_back_items(conn, lease, job_id, max_attempts, releasing)
    old = await lock_state(conn, job_id)
    check = "release_lease.held" if releasing else "requeue_expired.lapsed"
    if old is not None and await fetch_one(conn, check, lease) is None:
        raise Refused()  # renewed, finished or released while this waited
    await run(conn, "leases.release", lease)
    if old is None:
        return count  # the job was purged while the lease was out: drop the lease
    new = after_requeue(old, requeued)
    if spent:
        new = after_finish(new, spent, spent, None, now)
    await save_state(conn, job_id, old, new, now, retention)
    if new.pending > old.pending:
        await run(conn, "work.notify")
    return count


async def _take_back_items(
    conn: Conn, lease: dict[str, Any], job_id: str, max_attempts: int, releasing: bool
) -> tuple[int, int, int]:
    """Requeue a lease's items, failing those out of attempts: (taken, requeued, failed)."""
    rows = await fetch_all(conn, "requeue_expired.items", lease)  # locks them, in index order
    if releasing:
        await run(conn, "release_lease.refund", lease)
    spent = [(i, p, a) for i, p, a in rows if a >= max_attempts]
    requeued = await run(conn, "requeue_expired.requeue", {**lease, "max_attempts": max_attempts})
    if spent:
        await _fail_spent(conn, job_id, lease["lease_id"], spent)
    return len(rows), requeued, len(spent)


async def _fail_spent(
    conn: Conn, job_id: str, lease_id: int, spent: list[tuple[int, bytes, int]]
) -> None:
    found = await fetch_one(conn, "requeue_expired.job_action", {"id": job_id})
    action = None if found is None else found[0]
    failed = []
    for index, payload, attempts in spent:
        details = (
            f"the item's worker stopped responding {attempts} times (its lease expired); giving up"
        )
        entry = failure_entry(index, _as_item(payload), action, "WorkerLost", details)
        failed.append(FinishedItem(index, False, orjson.dumps(entry)))
    await record(conn, job_id, lease_id, failed)


async def purge_job(conn: Conn, job_id: str) -> None:
    """Delete a job in bounded steps (each its own transaction unless one is open)."""
    for name in ("purge_expired.items", "purge_expired.results"):
        while await run(conn, name, {"id": job_id}) > 0:
            continue
    await run(conn, "purge_expired.job", {"id": job_id})


def _as_item(payload: bytes) -> dict[str, Any]:
    item = orjson.loads(payload)
    return item if isinstance(item, dict) else {}
