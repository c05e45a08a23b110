"""PostgreSQL: webhook deliveries (the outbox that job_state.save fills) and tenants' secrets.

Processes on every node claim due deliveries with SKIP LOCKED under a lease, so one attempt
is never sent by two of them. Deliveries are locked on their own, never with a job row.
"""

from __future__ import annotations

from joblot.store import AttemptOutcome, DeliveryRow, DueDelivery, WebhookSecret
from joblot.store.common import (
    LOST_ATTEMPT,
    attempt_total,
    delivery_rows,
    due_delivery,
    outcome_params,
    total_params,
)
from joblot.store.postgres.clients import job_version
from joblot.store.postgres.connection import Conn, fetch_all, fetch_one, rowcount


async def claim_deliveries(
    conn: Conn, *, limit: int, now: float, lease_seconds: float
) -> list[DueDelivery]:
    """Lease up to `limit` due deliveries for one attempt each, recording the attempts."""
    due = {"now": now, "limit": limit, "until": now + lease_seconds}
    found = await fetch_one(conn, "deliveries.any_due", due)
    if found is None or not found[0]:
        return []
    async with conn.transaction():
        claimed = [due_delivery(row) for row in await fetch_all(conn, "deliveries.claim", due)]
        if claimed:
            ids = [d.id for d in claimed]
            await rowcount(conn, "deliveries.mark_lost", {"ids": ids, "lost": LOST_ATTEMPT})
            attempts = {"ids": ids, "ns": [d.attempt for d in claimed], "now": now}
            await rowcount(conn, "deliveries.insert_attempt", attempts)
    return claimed


async def keep_delivery_body(conn: Conn, delivery_id: str, body: bytes) -> bytes:
    """Store the event a delivery sends unless one is stored; return the stored one."""
    row = await fetch_one(conn, "deliveries.keep_body", {"id": delivery_id, "body": body})
    return body if row is None else bytes(row[0])


async def finish_delivery(conn: Conn, outcome: AttemptOutcome, now: float) -> bool:
    """Record an attempt's answer; move the delivery on if its lease is still held."""
    params = outcome_params(outcome, now)
    async with conn.transaction():
        await rowcount(conn, "deliveries.finish_attempt", params)
        await rowcount(conn, "metric_totals.add", total_params(attempt_total(outcome)))
        held = await rowcount(conn, "deliveries.finish", params) == 1
        await rowcount(conn, "deliveries.drop_orphan_attempts", params)
        await rowcount(conn, "deliveries.drop_orphan", params)
    return held


async def list_deliveries(
    conn: Conn, tenant: str, job_id: str, now: float
) -> list[DeliveryRow] | None:
    """A job's deliveries with their attempts; None if there is no such job."""
    if await job_version(conn, tenant, job_id, now) is None:
        return None
    params = {"job_id": job_id, "tenant": tenant}
    return delivery_rows(
        await fetch_all(conn, "deliveries.list", params),
        await fetch_all(conn, "deliveries.list_attempts", params),
    )


async def redeliver(conn: Conn, tenant: str, job_id: str, now: float) -> int | None:
    """Queue a new round of a job's deliveries, due now; None if there is no such job."""
    if await job_version(conn, tenant, job_id, now) is None:
        return None
    params = {"job_id": job_id, "tenant": tenant, "now": now}
    return await rowcount(conn, "deliveries.redeliver", params)


async def job_callback(
    conn: Conn, tenant: str, job_id: str, now: float
) -> tuple[str, str | None] | None:
    """The job's callback_url and status base, if it has a callback."""
    row = await fetch_one(conn, "job_callback", {"id": job_id, "tenant": tenant, "now": now})
    return None if row is None else (row[0], row[1])


async def webhook_secret(
    conn: Conn, tenant: str, candidate: str, now: float, *, rotate: bool
) -> WebhookSecret:
    """The tenant's secret, created from `candidate` on first use (or rotated to it)."""
    params = {"tenant": tenant, "secret": candidate, "now": now}
    found = await fetch_one(conn, "webhook_secrets.select", params)
    if found is None or rotate:
        name = "webhook_secrets.rotate" if rotate else "webhook_secrets.create"
        await rowcount(conn, name, params)
        found = await fetch_one(conn, "webhook_secrets.select", params)
    assert found is not None  # created just now, or by another process that got there first
    secret, previous, rotated_at = found
    return WebhookSecret(secret=secret, previous=previous, rotated_at=rotated_at)
