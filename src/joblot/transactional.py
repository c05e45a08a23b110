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
from joblot.config import DEFAULT_URL, Settings, load_settings
from joblot.egress import check_callback_url, check_callback_url_blocking
from joblot.models import DEFAULT_TENANT, JobStatus, Status, status_url
from joblot.store import NewJob
from joblot.store.postgres.clients import insert_job, insert_job_sync
from joblot.submission import build_job

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
    callback_url: str | None,
    public_url: str,
    now: float | None,
) -> NewJob:
    _check_in_transaction(conn)
    doc: dict[str, Any] = {"job": {"job_type": job_type, "items": items}}
    if callback_url is not None:
        doc["job"]["callback_url"] = callback_url
    when = time.time() if now is None else now
    return build_job(app, tenant, doc, max_items, when, public_url=public_url)


def _allow_private(*, given: bool | None) -> bool:
    """As given, or as JOBLOT_WEBHOOK_ALLOW_PRIVATE says (as for `joblot serve`)."""
    return load_settings().webhook_allow_private if given is None else given


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
    callback_url: str | None = None,
    max_items: int = Settings.max_items,
    public_url: str = DEFAULT_URL,
    allow_private: bool | None = None,
    now: float | None = None,
) -> JobStatus:
    """Queue a job on the caller's connection, inside the caller's transaction.

    The items are validated against `app` as `POST /api/v2/jobs` does (RecordInvalid,
    UnknownJobType, TooManyItems); nothing is committed here, and workers are notified when
    the caller's transaction commits. The answer is the queued JobStatus, its `url` under
    `public_url` (the address clients reach the API at). A `callback_url` gets the job's
    completion webhook, as with `POST /api/v2/jobs`; it must resolve to public addresses unless
    `allow_private` (default: JOBLOT_WEBHOOK_ALLOW_PRIVATE), else RecordInvalid.
    """
    job = _new_job(
        conn,
        app,
        job_type,
        items,
        tenant=tenant,
        max_items=max_items,
        callback_url=callback_url,
        public_url=public_url,
        now=now,
    )
    if job.callback_url is not None:
        allow = _allow_private(given=allow_private)
        await check_callback_url(job.callback_url, allow_private=allow)
    await insert_job(conn, job)
    return _queued(job, public_url)


def submit_job_in_transaction_sync(
    conn: psycopg.Connection[Any],
    app: App,
    job_type: str,
    items: list[Any],
    *,
    tenant: str = DEFAULT_TENANT,
    callback_url: str | None = None,
    max_items: int = Settings.max_items,
    public_url: str = DEFAULT_URL,
    allow_private: bool | None = None,
    now: float | None = None,
) -> JobStatus:
    """`submit_job_in_transaction` for a blocking psycopg connection (e.g. in a web view)."""
    job = _new_job(
        conn,
        app,
        job_type,
        items,
        tenant=tenant,
        max_items=max_items,
        callback_url=callback_url,
        public_url=public_url,
        now=now,
    )
    if job.callback_url is not None:
        allow = _allow_private(given=allow_private)
        check_callback_url_blocking(job.callback_url, allow_private=allow)
    insert_job_sync(conn, job)
    return _queued(job, public_url)
