"""Submitting a job to PostgreSQL, also inside a transaction the caller owns."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from joblot import service
from joblot.app import App
from joblot.auth import DEFAULT_TENANT
from joblot.config import Settings
from joblot.store import JobRow, NewJob, job_params, queued_row
from joblot.store.sql import load_queries

_ITEM_TYPES = ["text", "int8", "bytea"]  # the columns of submit_job.copy_items, for binary COPY


@functools.cache
def queries() -> dict[str, str]:
    """The named SQL blocks of the PostgreSQL backend, read once."""
    return load_queries("postgres")


def _item_rows(job: NewJob) -> Iterator[tuple[str, int, bytes]]:
    return ((job.id, index, payload) for index, payload in enumerate(job.payloads))


async def insert_job(conn: psycopg.AsyncConnection[Any], job: NewJob) -> bool:
    """Insert `job`, its items and a wake-up on `conn` without committing; False on a key clash."""
    q = queries()
    cur = conn.cursor()
    await cur.execute(q["submit_job.insert_job"], job_params(job))
    if cur.rowcount == 0:
        return False  # a concurrent submit with the same idempotency key got there first
    async with cur.copy(q["submit_job.copy_items"]) as copy:
        copy.set_types(_ITEM_TYPES)
        for row in _item_rows(job):
            await copy.write_row(row)
    await cur.execute(q["work.notify"])
    return True


def insert_job_sync(conn: psycopg.Connection[Any], job: NewJob) -> bool:
    """The blocking twin of `insert_job`: the same named SQL, in the same order."""
    q = queries()
    cur = conn.cursor()
    cur.execute(q["submit_job.insert_job"], job_params(job))
    if cur.rowcount == 0:
        return False
    with cur.copy(q["submit_job.copy_items"]) as copy:
        copy.set_types(_ITEM_TYPES)
        for row in _item_rows(job):
            copy.write_row(row)
    cur.execute(q["work.notify"])
    return True


def build_job(
    app: App, job_type: str, items: list[Any], tenant: str, max_items: int, now: float | None
) -> NewJob:
    """Validate a submission exactly as `Service.submit_job` does and make its NewJob."""
    doc = {"job": {"job_type": job_type, "items": items}}
    return service.build_job(app, tenant, doc, max_items, time.time() if now is None else now)


def _check_in_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        raise psycopg.ProgrammingError(
            "submit_job_in_transaction needs a transaction to join, but the connection is in "
            "autocommit mode outside one: call it inside `conn.transaction()`"
        )


async def submit_job_in_transaction(
    conn: psycopg.AsyncConnection[Any],
    app: App,
    job_type: str,
    items: list[Any],
    *,
    tenant: str = DEFAULT_TENANT,
    max_items: int = Settings.max_items,
    now: float | None = None,
) -> JobRow:
    """Queue a job on the caller's connection: it exists if and only if the caller commits.

    The items are validated against `app` as `POST /api/v2/jobs` does (RecordInvalid,
    UnknownJobType, TooManyItems); nothing is committed here, and workers are notified when
    the caller's transaction commits. Example::

        async with await psycopg.AsyncConnection.connect(url) as conn:
            async with conn.transaction():
                await conn.execute("UPDATE orders SET state = 'billing' WHERE id = %s", [7])
                row = await submit_job_in_transaction(conn, app, "invoices.send", [{"id": 7}])
            print(row.id)  # committed together with the UPDATE
    """
    _check_in_transaction(conn)
    job = build_job(app, job_type, items, tenant, max_items, now)
    await insert_job(conn, job)
    return queued_row(job)


def submit_job_in_transaction_sync(
    conn: psycopg.Connection[Any],
    app: App,
    job_type: str,
    items: list[Any],
    *,
    tenant: str = DEFAULT_TENANT,
    max_items: int = Settings.max_items,
    now: float | None = None,
) -> JobRow:
    """`submit_job_in_transaction` for a blocking psycopg connection (e.g. in a web view).

    Example::

        with psycopg.connect(url) as conn:  # not autocommit: the job commits with the order
            conn.execute("UPDATE orders SET state = 'billing' WHERE id = %s", [7])
            row = submit_job_in_transaction_sync(conn, app, "invoices.send", [{"id": 7}])
            conn.commit()
    """
    _check_in_transaction(conn)
    job = build_job(app, job_type, items, tenant, max_items, now)
    insert_job_sync(conn, job)
    return queued_row(job)
