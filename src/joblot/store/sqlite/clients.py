"""SQLite: what API clients do — submit, read, list and stop jobs, and manage tokens.

Reads run on reader threads (WAL lets them run beside the writer); writes on the writer.
"""

from __future__ import annotations

from typing import Any

import orjson

from joblot.errors import Unavailable
from joblot.models import JOB_DURATION_BUCKETS, Status, after_stop
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
from joblot.store.sqlite.connection import (
    SQL,
    Conn,
    fetch_all,
    fetch_one,
    rowcount,
    save_state,
    transaction,
)
from joblot.store.sqlite.maintenance import purge_job

# -- submit -------------------------------------------------------------------------------------

# A job of more items than this loads them in steps of this many, one write transaction each
# (about 20 ms of the write lock), so that claims, results and cancels of other jobs get the
# lock in between; the job row comes last, so nobody sees the job before all its items are in.
CHUNK_ITEMS = 5000
LOAD_SECONDS = 600.0  # a load still going this long after its submit began is given up


def submit_job(conn: Conn, job: NewJob) -> tuple[JobRow, bool]:
    """Insert the job and its items in one transaction (or find the idempotent twin)."""
    with transaction(conn):
        twin = _twin_or_quota(conn, job)
        if twin is not None:
            return twin, False
        insert_job(conn, job)
        _insert_items(conn, job, 0, len(job.payloads))
    return queued_row(job), True


def insert_job(conn: Conn, job: NewJob) -> None:
    """The job row, with the next change number (inside the caller's write transaction)."""
    conn.execute(SQL["changes.next"])
    conn.execute(SQL["submit_job.insert_job"], job_params(job))


def begin_load(conn: Conn, job: NewJob) -> JobRow | None:
    """The first step of a big submit: the idempotent twin if there is one (then nothing is
    loaded), else a `loading_jobs` row that the following steps add items under."""
    with transaction(conn):
        twin = _twin_or_quota(conn, job)
        if twin is None:
            params = {"id": job.id, "until": job.created_at + LOAD_SECONDS}
            rowcount(conn, "submit_job.begin_load", params)
    return twin


def load_items(conn: Conn, job: NewJob, start: int) -> None:
    """One step of a big submit: CHUNK_ITEMS items from `start`, unless the load was given up."""
    with transaction(conn):
        if fetch_one(conn, "submit_job.load_held", {"id": job.id}) is None:
            raise load_given_up()
        _insert_items(conn, job, start, start + CHUNK_ITEMS)


def end_load(conn: Conn, job: NewJob) -> tuple[JobRow, bool]:
    """The last step of a big submit: the job row, which makes the job and its items visible.

    An idempotent twin that finished loading first wins (created False: the caller then
    deletes what this submit loaded); the quota is checked again, as a twin may have taken it.
    """
    with transaction(conn):
        twin = _twin_or_quota(conn, job)
        if twin is not None:
            return twin, False
        if rowcount(conn, "submit_job.end_load", {"id": job.id}) != 1:
            raise load_given_up()
        insert_job(conn, job)
    return queued_row(job), True


def load_given_up() -> Unavailable:
    """The answer to a submit whose load took so long that it was given up (or whose items
    could not all be stored): nothing of it remains."""
    return Unavailable(
        f"storing the items took longer than {LOAD_SECONDS:.0f} s and was given up; "
        "nothing was stored: submit the job again"
    )


def _insert_items(conn: Conn, job: NewJob, start: int, end: int) -> None:
    rows = ((job.id, i, job.payloads[i]) for i in range(start, min(end, len(job.payloads))))
    conn.executemany(SQL["submit_job.insert_item"], rows)


def _twin_or_quota(conn: Conn, job: NewJob) -> JobRow | None:
    """The job an earlier submit with the same idempotency key made; else None, once the
    tenant's quota of unfinished jobs is checked (TooManyJobs)."""
    if job.idempotency_key is not None:
        existing = _find_idempotent(conn, job)
        if existing is not None:
            return existing
    if job.max_active_jobs is not None:
        (active,) = fetch_one(conn, "submit_job.count_active", {"tenant": job.tenant})
        if active >= job.max_active_jobs:
            raise too_many_jobs(active)
    return None


def _find_idempotent(conn: Conn, job: NewJob) -> JobRow | None:
    key = {"tenant": job.tenant, "key": job.idempotency_key}
    found = fetch_one(conn, "submit_job.find_idempotent", key)
    if found is None:
        return None
    job_id, request_hash, expires_at = found
    if expires_at is not None and expires_at <= job.created_at:
        purge_job(conn, job_id)  # the key's job is past retention: start afresh
        return None
    if request_hash != job.request_hash:
        raise idempotency_key_reused()
    row = get_job(conn, job.tenant, job_id, job.created_at, 0)
    assert row is not None
    return row


# -- read ---------------------------------------------------------------------------------------


def get_job(conn: Conn, tenant: str, job_id: str, now: float, inline: int) -> JobRow | None:
    """One primary-key lookup, plus a bounded range scan for inline results."""
    row = fetch_one(conn, "get_job.select", {"id": job_id, "tenant": tenant, "now": now})
    return None if row is None else job_row(row, _inline_results(conn, row, inline))


def _inline_results(conn: Conn, row: tuple[Any, ...], inline: int) -> list[bytes] | None:
    job_id, status, total = row[0], row[2], row[3]
    if total > inline or status == Status.QUEUED:
        return None
    return [e for (e,) in fetch_all(conn, "get_job.inline_results", {"id": job_id})]


def get_jobs(conn: Conn, tenant: str, job_ids: list[str], now: float, inline: int) -> list[JobRow]:
    """The jobs that exist among `job_ids`, in the order asked."""
    rows = (get_job(conn, tenant, job_id, now, inline) for job_id in job_ids)
    return [row for row in rows if row is not None]


def list_jobs(
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
    params = {"tenant": tenant, "key": key, "now": now, "limit": size + 1}
    params.update(filter_params(where))
    params["statuses"] = orjson.dumps(params["statuses"]).decode()
    rows = fetch_all(conn, name, params)
    page, has_more = keyset_page(rows, size, backwards=before is not None)
    return Page([job_row(r, _inline_results(conn, r, inline)) for r in page], has_more)


def list_results(
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
    if job_version(conn, tenant, job_id, now) is None:
        return None
    name, idx = keyset_query(results_operation(success=success), after, before, -1)
    params = {"id": job_id, "idx": idx, "limit": size + 1}
    rows = fetch_all(conn, name, params)
    page, has_more = keyset_page(rows, size, backwards=before is not None)
    return Page([(i, e) for i, e in page], has_more)


def failed_items(conn: Conn, tenant: str, job_id: str, now: float) -> list[bytes] | None:
    """The payloads of a job's failed items, as submitted, in index order; None if there is
    no such job."""
    if job_version(conn, tenant, job_id, now) is None:
        return None
    return [p for (p,) in fetch_all(conn, "failed_items.select", {"id": job_id})]


def job_version(conn: Conn, tenant: str, job_id: str, now: float) -> int | None:
    """The job's change counter, for ETags and long polls."""
    row = fetch_one(conn, "job_version", {"id": job_id, "tenant": tenant, "now": now})
    return None if row is None else int(row[0])


def job_expiry(conn: Conn, tenant: str, job_id: str, now: float) -> float | None:
    """When the job expires; None while it has no expiry (unfinished) or if there is no such job."""
    row = fetch_one(conn, "job_expiry", {"id": job_id, "tenant": tenant, "now": now})
    return None if row is None or row[0] is None else float(row[0])


# -- stop ---------------------------------------------------------------------------------------


def stop_job(
    conn: Conn,
    tenant: str | None,
    job_id: str,
    *,
    message: str | None,
    now: float,
    retention: float,
) -> bool:
    """Fail an unfinished job; False when there is no such job for this tenant."""
    with transaction(conn):
        if tenant is None:
            row = fetch_one(conn, "job_state.select", {"id": job_id})
        else:
            params = {"id": job_id, "tenant": tenant, "now": now}
            row = fetch_one(conn, "job_state.select_for_tenant", params)
        if row is None:
            return False
        old = state_from_row(row)
        if old.status.finished:
            raise job_finished(job_id, old.status)
        save_state(conn, job_id, old, after_stop(old, message), now=now, retention=retention)
    return True


# -- tokens -------------------------------------------------------------------------------------


def create_token(conn: Conn, token_id: str, tenant: str, digest: str, now: float) -> None:
    """Store a new token's digest."""
    with transaction(conn):
        params = {"id": token_id, "tenant": tenant, "digest": digest, "now": now}
        rowcount(conn, "tokens.create", params)


def list_tokens(conn: Conn) -> list[TokenRow]:
    """Every token, revoked ones included, oldest first."""
    return [
        TokenRow(id=i, tenant=t, created_at=c, revoked_at=r)
        for i, t, c, r in fetch_all(conn, "tokens.list")
    ]


def revoke_token(conn: Conn, token_id: str, now: float) -> bool:
    """Revoke a live token."""
    with transaction(conn):
        return rowcount(conn, "tokens.revoke", {"id": token_id, "now": now}) == 1


def find_token(conn: Conn, digest: str) -> tuple[str, str] | None:
    """(token id, tenant) of the live token with this digest."""
    row = fetch_one(conn, "tokens.find", {"digest": digest})
    return None if row is None else (row[0], row[1])


def count_tokens(conn: Conn) -> TokenCount:
    """How many live and how many revoked tokens there are."""
    live, revoked = fetch_one(conn, "tokens.count")
    return TokenCount(live=int(live), revoked=int(revoked))


def live_tokens(conn: Conn, token_ids: list[str]) -> set[str]:
    """The ids among `token_ids` of live tokens."""
    rows = fetch_all(conn, "tokens.live", {"ids": orjson.dumps(token_ids).decode()})
    return {token_id for (token_id,) in rows}


# -- metrics ------------------------------------------------------------------------------------


def read_metric_counts(conn: Conn, now: float) -> MetricCounts:
    """Counts of every job, live leases and the metric totals, from one read snapshot."""
    bounds = orjson.dumps(JOB_DURATION_BUCKETS).decode()
    conn.execute(SQL["metric_counts.begin"])
    try:
        return metric_counts(
            fetch_all(conn, "metric_counts.jobs"),
            fetch_all(conn, "metric_counts.durations", {"bounds": bounds}),
            _count(fetch_one(conn, "metric_counts.leases", {"now": now})),
            fetch_all(conn, "metric_counts.totals"),
            fetch_all(conn, "metric_counts.running", {"now": now}),
        )
    finally:
        conn.execute(SQL["metric_counts.end"])


def _count(row: Any) -> int:
    return int(row[0])


# -- changes ------------------------------------------------------------------------------------


def change_position(conn: Conn) -> str:
    """The last change number handed out: what changes from now on comes after it."""
    (seq,) = fetch_one(conn, "changes.current")
    return str(seq)


def changes_since(conn: Conn, position: str) -> Changes[JobChange]:
    """Every job changed after change number `position`, and the last number seen."""
    rows = fetch_all(conn, "changes.since", {"since": int(position)})
    last = str(rows[-1][3]) if rows else position
    return Changes([JobChange(id_, tenant, version) for id_, tenant, version, _ in rows], last)


def tenant_changes(conn: Conn, tenant: str, position: str, now: float) -> Changes[JobRow]:
    """The tenant's jobs changed after change number `position`, without results."""
    params = {"tenant": tenant, "since": int(position), "now": now}
    rows = fetch_all(conn, "tenant_changes.select", params)
    last = str(rows[-1][JOB_COLUMNS]) if rows else position
    return Changes([job_row(row, None) for row in rows], last)


def valid_position(position: str) -> bool:
    """A change number: digits only, and one SQLite's integers hold."""
    return position.isascii() and position.isdigit() and len(position) <= 18
