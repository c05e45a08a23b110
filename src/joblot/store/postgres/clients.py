"""PostgreSQL: what API clients do — submit, read, list and stop jobs, and manage tokens.

Reads are one autocommit statement each (one round trip); writes open a transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg

from joblot.errors import Unavailable
from joblot.models import JOB_DURATION_BUCKETS, after_stop
from joblot.store import (
    ANY_JOB,
    Changes,
    JobChange,
    JobFilter,
    JobRow,
    MetricCounts,
    NewJob,
    Page,
    TokenCount,
    TokenRow,
)
from joblot.store.common import (
    JOB_COLUMNS,
    filter_params,
    idempotency_key_reused,
    job_finished,
    job_params,
    job_row,
    keyset_page,
    keyset_query,
    list_operation,
    metric_counts,
    queued_row,
    results_operation,
    state_from_row,
    too_many_jobs,
)
from joblot.store.postgres.connection import (
    SQL,
    Conn,
    Row,
    fetch_all,
    fetch_one,
    rowcount,
    save_state,
)
from joblot.store.postgres.maintenance import purge_job

_ITEM_TYPES = ["text", "int8", "bytea"]  # the columns of submit_job.copy_items, for binary COPY

# -- submit -------------------------------------------------------------------------------------


def _item_rows(job: NewJob) -> Iterator[tuple[str, int, bytes]]:
    return ((job.id, index, payload) for index, payload in enumerate(job.payloads))


async def insert_job(conn: psycopg.AsyncConnection[Any], job: NewJob) -> bool:
    """Insert `job`, its items and a wake-up on `conn` without committing; False on a key clash."""
    cur = conn.cursor()
    await cur.execute(SQL["submit_job.insert_job"], job_params(job))
    if cur.rowcount == 0:
        return False  # a concurrent submit with the same idempotency key got there first
    async with cur.copy(SQL["submit_job.copy_items"]) as copy:
        copy.set_types(_ITEM_TYPES)
        for row in _item_rows(job):
            await copy.write_row(row)
    await cur.execute(SQL["work.notify"])
    return True


def insert_job_sync(conn: psycopg.Connection[Any], job: NewJob) -> bool:
    """The blocking twin of `insert_job`, for callers on a blocking connection: the same named
    SQL, in the same order."""
    cur = conn.cursor()
    cur.execute(SQL["submit_job.insert_job"], job_params(job))
    if cur.rowcount == 0:
        return False
    with cur.copy(SQL["submit_job.copy_items"]) as copy:
        copy.set_types(_ITEM_TYPES)
        for row in _item_rows(job):
            copy.write_row(row)
    cur.execute(SQL["work.notify"])
    return True


async def submit_job(conn: Conn, job: NewJob) -> tuple[JobRow, bool]:
    """Insert the job and its items in the caller's transaction (or find the idempotent twin).

    Differs by necessity from SQLite, which loads a big job in steps: here the job and all its
    items go in with one transaction, invisible to everyone until it commits, and writers of
    other jobs do not wait for it. The tenant's quota lock is taken after the items are in,
    so a big submit holds it only for the moment before its commit.
    """
    if job.idempotency_key is not None:
        existing = await _find_idempotent(conn, job)
        if existing is not None:
            return existing, False
    if job.max_active_jobs is not None:  # refuse early, before loading anything
        active = await _active_jobs(conn, job.tenant)
        if active >= job.max_active_jobs:
            raise too_many_jobs(active)
    if not await insert_job(conn, job):
        # A concurrent submit with the same key committed first: answer with its job.
        existing = await _find_idempotent(conn, job)
        if existing is None:
            raise Unavailable("a submission with this Idempotency-Key was in flight; retry")
        return existing, False
    if job.max_active_jobs is not None:  # again, in turn with this tenant's other submits
        await rowcount(conn, "submit_job.lock_tenant", {"tenant": job.tenant})
        others = await _active_jobs(conn, job.tenant) - 1  # this job's row counts too
        if others >= job.max_active_jobs:
            raise too_many_jobs(others)
    return queued_row(job), True


async def _active_jobs(conn: Conn, tenant: str) -> int:
    found = await fetch_one(conn, "submit_job.count_active", {"tenant": tenant})
    return 0 if found is None else int(found[0])


async def _find_idempotent(conn: Conn, job: NewJob) -> JobRow | None:
    key = {"tenant": job.tenant, "key": job.idempotency_key}
    found = await fetch_one(conn, "submit_job.find_idempotent", key)
    if found is None:
        return None
    job_id, request_hash, expires_at = found
    if expires_at is not None and expires_at <= job.created_at:
        await purge_job(conn, job_id)  # the key's job is past retention: start afresh
        return None
    if request_hash != job.request_hash:
        raise idempotency_key_reused()
    return await get_job(conn, job.tenant, job_id, job.created_at, 0)


# -- read ---------------------------------------------------------------------------------------


def _job_row(row: Row) -> JobRow:
    results = row[JOB_COLUMNS]
    return job_row(row, None if results is None else list(results))


async def get_job(conn: Conn, tenant: str, job_id: str, now: float, inline: int) -> JobRow | None:
    """One primary-key lookup, with the inline results in the same round trip."""
    params = {"id": job_id, "tenant": tenant, "now": now, "inline": inline}
    row = await fetch_one(conn, "get_job.select", params)
    return None if row is None else _job_row(row)


async def get_jobs(
    conn: Conn, tenant: str, job_ids: list[str], now: float, inline: int
) -> list[JobRow]:
    """The jobs that exist among `job_ids`, in the order asked, in one query."""
    params = {"ids": job_ids, "tenant": tenant, "now": now, "inline": inline}
    return [_job_row(r) for r in await fetch_all(conn, "get_jobs.select", params)]


async def list_jobs(
    conn: Conn,
    tenant: str,
    *,
    now: float,
    after: str | None,
    before: str | None,
    size: int,
    inline: int,
    where: JobFilter = ANY_JOB,
) -> Page[JobRow]:
    """A page of the jobs `where` lets through, in listing order, each with its results
    inline when small."""
    name, key = keyset_query(list_operation(where), after, before, "")
    params = {"tenant": tenant, "key": key, "now": now, "limit": size + 1, "inline": inline}
    params.update(filter_params(where))
    rows = await fetch_all(conn, name, params)
    page, has_more = keyset_page(rows, size, backwards=before is not None)
    return Page([_job_row(r) for r in page], has_more)


async def list_results(
    conn: Conn,
    tenant: str,
    job_id: str,
    *,
    now: float,
    after: int | None,
    before: int | None,
    size: int,
    success: bool | None = None,
) -> Page[tuple[int, bytes]] | None:
    """A page of a job's result entries by index, only the failed or the succeeded ones if
    `success` says which; None if there is no such job."""
    if await job_version(conn, tenant, job_id, now) is None:
        return None
    name, idx = keyset_query(results_operation(success=success), after, before, -1)
    params = {"id": job_id, "idx": idx, "limit": size + 1}
    rows = await fetch_all(conn, name, params)
    page, has_more = keyset_page(rows, size, backwards=before is not None)
    return Page([(i, e) for i, e in page], has_more)


async def failed_items(conn: Conn, tenant: str, job_id: str, now: float) -> list[bytes] | None:
    """The payloads of a job's failed items, as submitted, in index order; None if there is
    no such job."""
    if await job_version(conn, tenant, job_id, now) is None:
        return None
    return [bytes(p) for (p,) in await fetch_all(conn, "failed_items.select", {"id": job_id})]


async def job_version(conn: Conn, tenant: str, job_id: str, now: float) -> int | None:
    """The job's change counter, for ETags and long polls."""
    row = await fetch_one(conn, "job_version", {"id": job_id, "tenant": tenant, "now": now})
    return None if row is None else int(row[0])


async def job_expiry(conn: Conn, tenant: str, job_id: str, now: float) -> float | None:
    """When the job expires; None while it has no expiry (unfinished) or if there is no such job."""
    row = await fetch_one(conn, "job_expiry", {"id": job_id, "tenant": tenant, "now": now})
    return None if row is None or row[0] is None else float(row[0])


# -- stop ---------------------------------------------------------------------------------------


async def stop_job(
    conn: Conn,
    tenant: str | None,
    job_id: str,
    *,
    message: str | None,
    now: float,
    retention: float,
) -> bool:
    """Fail an unfinished job, in the caller's transaction; False when there is no such job
    for this tenant."""
    if tenant is None:
        row = await fetch_one(conn, "job_state.select", {"id": job_id})
    else:
        params = {"id": job_id, "tenant": tenant, "now": now}
        row = await fetch_one(conn, "job_state.select_for_tenant", params)
    if row is None:
        return False
    old = state_from_row(row)
    if old.status.finished:
        raise job_finished(job_id, old.status)
    new = after_stop(old, message)
    await save_state(conn, job_id, old, new, now=now, retention=retention)
    return True


# -- tokens -------------------------------------------------------------------------------------


async def create_token(conn: Conn, token_id: str, tenant: str, digest: str, now: float) -> None:
    """Store a new token's digest."""
    params = {"id": token_id, "tenant": tenant, "digest": digest, "now": now}
    await rowcount(conn, "tokens.create", params)


async def list_tokens(conn: Conn) -> list[TokenRow]:
    """Every token, revoked ones included, oldest first."""
    return [
        TokenRow(id=i, tenant=t, created_at=c, revoked_at=r)
        for i, t, c, r in await fetch_all(conn, "tokens.list")
    ]


async def revoke_token(conn: Conn, token_id: str, now: float) -> bool:
    """Revoke a live token."""
    return await rowcount(conn, "tokens.revoke", {"id": token_id, "now": now}) == 1


async def find_token(conn: Conn, digest: str) -> tuple[str, str] | None:
    """(token id, tenant) of the live token with this digest."""
    row = await fetch_one(conn, "tokens.find", {"digest": digest})
    return None if row is None else (row[0], row[1])


async def count_tokens(conn: Conn) -> TokenCount:
    """How many live and how many revoked tokens there are."""
    row = await fetch_one(conn, "tokens.count")
    return TokenCount(live=0, revoked=0) if row is None else TokenCount(int(row[0]), int(row[1]))


async def live_tokens(conn: Conn, token_ids: list[str]) -> set[str]:
    """The ids among `token_ids` of live tokens."""
    return {token_id for (token_id,) in await fetch_all(conn, "tokens.live", {"ids": token_ids})}


# -- metrics ------------------------------------------------------------------------------------


async def read_metric_counts(conn: Conn, now: float) -> MetricCounts:
    """Counts of every job, live leases and the metric totals, from one snapshot."""
    async with conn.transaction():
        await conn.execute(SQL["metric_counts.begin"])
        leases = await fetch_one(conn, "metric_counts.leases", {"now": now})
        assert leases is not None
        return metric_counts(
            await fetch_all(conn, "metric_counts.jobs"),
            await fetch_all(
                conn, "metric_counts.durations", {"bounds": list(JOB_DURATION_BUCKETS)}
            ),
            leases[0],
            await fetch_all(conn, "metric_counts.totals"),
            await fetch_all(conn, "metric_counts.running", {"now": now}),
        )


# -- changes ------------------------------------------------------------------------------------

# A position is a snapshot as PostgreSQL writes it: `xmin:xmax:xip,...` (see migration 011).
_SNAPSHOT = re.compile(r"([0-9]{1,19}):([0-9]{1,19}):((?:[0-9]{1,19},)*[0-9]{1,19})?")
MAX_POSITION = 4096  # characters: a snapshot lists the transactions running when it was taken


async def change_position(conn: Conn) -> str:
    """The snapshot of now: what commits from now on is news."""
    row = await fetch_one(conn, "changes.current")
    assert row is not None
    return str(row[0])


async def changes_since(conn: Conn, position: str) -> Changes[JobChange]:
    """Every job whose last change the snapshot `position` did not see, and the snapshot this
    read at."""
    rows = await fetch_all(conn, "changes.since", _unseen(position))
    changed = [JobChange(id_, tenant, version) for _, id_, tenant, version in rows if id_]
    return Changes(changed, rows[0][0])


async def tenant_changes(conn: Conn, tenant: str, position: str, now: float) -> Changes[JobRow]:
    """The tenant's jobs whose last change the snapshot `position` did not see, without
    results, and the snapshot this read at."""
    params = {"tenant": tenant, "now": now, **_unseen(position)}
    rows = await fetch_all(conn, "tenant_changes.select", params)
    changed = [job_row(row, None) for row in rows if row[0] is not None]
    return Changes(changed, rows[0][JOB_COLUMNS])


def _snapshot(position: str) -> tuple[int, int, list[int]] | None:
    """xmin, xmax and the running ids of a snapshot as PostgreSQL writes it, if it is one."""
    found = _SNAPSHOT.fullmatch(position) if len(position) <= MAX_POSITION else None
    if found is None:
        return None
    running = [int(x) for x in found[3].split(",")] if found[3] else []
    return int(found[1]), int(found[2]), running


def _unseen(position: str) -> dict[str, Any]:
    """The parameters that select the changes snapshot `position` did not see."""
    snapshot = _snapshot(position)
    assert snapshot is not None, "positions are checked with valid_position"
    _, xmax, running = snapshot
    return {"xmax": xmax, "running": running}


def valid_position(position: str) -> bool:
    """A snapshot as PostgreSQL writes it: 0 < xmin <= xmax, the running ids ascending from
    xmin and below xmax, all of them bigints."""
    snapshot = _snapshot(position)
    if snapshot is None:
        return False
    xmin, xmax, running = snapshot
    in_range = all(xmin <= x < xmax for x in running)
    return 0 < xmin <= xmax < 2**63 and in_range and running == sorted(running)
