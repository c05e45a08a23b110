"""Submit a job inside your own PostgreSQL transaction: it exists if and only if you commit.

```python
import psycopg
from joblot.transactional import submit_job_in_transaction_sync
from myproject.jobs import app          # the same App your workers run

with psycopg.connect(DATABASE_URL) as conn, conn.transaction():
    conn.execute("UPDATE orders SET state = 'invoicing' WHERE id = %s", [order_id])
    status = submit_job_in_transaction_sync(conn, app, "invoices.send", [{"id": order_id}])
```
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from joblot.app import App
from joblot.config import DEFAULT_URL, Settings
from joblot.models import DEFAULT_TENANT, JobStatus, Status, status_url
from joblot.service import build_job
from joblot.store import NewJob
from joblot.store.postgres.clients import insert_job, insert_job_sync

__all__ = ["submit_job_in_transaction", "submit_job_in_transaction_sync"]


def _check_in_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        raise psycopg.ProgrammingError(
            "submit_job_in_transaction needs a transaction to join, but the connection is in "
            "autocommit mode outside one: call it inside `conn.transaction()`"
        )


def _new_job(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    app: App,
    job_type: str,
    items: list[Any],
    *,
    tenant: str,
    max_items: int,
    now: float | None,
) -> NewJob:
    _check_in_transaction(conn)
    doc = {"job": {"job_type": job_type, "items": items}}
    return build_job(app, tenant, doc, max_items, time.time() if now is None else now)


def _queued(job: NewJob, public_url: str) -> JobStatus:
    return JobStatus(
        id=job.id,
        job_type=job.job_type,
        url=status_url(public_url, job.id),
        total=len(job.payloads),
        progress=None,
        status=Status.QUEUED,
        message=None,
        results=None,
    )


async def submit_job_in_transaction(
    conn: psycopg.AsyncConnection[Any],
    app: App,
    job_type: str,
    items: list[Any],
    *,
    tenant: str = DEFAULT_TENANT,
    max_items: int = Settings.max_items,
    public_url: str = DEFAULT_URL,
    now: float | None = None,
) -> JobStatus:
    """Queue a job on the caller's connection, inside the caller's transaction.

    The items are validated against `app` as `POST /api/v2/jobs` does (RecordInvalid,
    UnknownJobType, TooManyItems); nothing is committed here, and workers are notified when
    the caller's transaction commits. The answer is the queued JobStatus, its `url` under
    `public_url` (the address clients reach the API at).
    """
    job = _new_job(conn, app, job_type, items, tenant=tenant, max_items=max_items, now=now)
    await insert_job(conn, job)
    return _queued(job, public_url)


def submit_job_in_transaction_sync(
    conn: psycopg.Connection[Any],
    app: App,
    job_type: str,
    items: list[Any],
    *,
    tenant: str = DEFAULT_TENANT,
    max_items: int = Settings.max_items,
    public_url: str = DEFAULT_URL,
    now: float | None = None,
) -> JobStatus:
    """`submit_job_in_transaction` for a blocking psycopg connection (e.g. in a web view)."""
    job = _new_job(conn, app, job_type, items, tenant=tenant, max_items=max_items, now=now)
    insert_job_sync(conn, job)
    return _queued(job, public_url)
