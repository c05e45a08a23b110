"""SQLite: webhook deliveries (the outbox that job_state.save fills) and tenants' secrets.

Claims and outcomes run on the writer thread; the write lock keeps two processes from
claiming one delivery, and the lease keeps them from sending it again while it is out.
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
from joblot.store.sqlite.clients import job_version
from joblot.store.sqlite.connection import (
    Conn,
    fetch_all,
    fetch_one,
    in_transaction,
    rowcount,
    transaction,
)


def claim_deliveries(
    conn: Conn, *, limit: int, now: float, lease_seconds: float
) -> list[DueDelivery]:
    """Lease up to `limit` due deliveries for one attempt each, recording the attempts."""
    due = {"now": now, "limit": limit, "until": now + lease_seconds}
    (any_due,) = fetch_one(conn, "deliveries.any_due", due)
    if not any_due:
        return []
    with transaction(conn):
        claimed = [due_delivery(row) for row in fetch_all(conn, "deliveries.claim", due)]
        for d in claimed:
            rowcount(conn, "deliveries.mark_lost", {"id": d.id, "lost": LOST_ATTEMPT})
            rowcount(conn, "deliveries.insert_attempt", {"id": d.id, "n": d.attempt, "now": now})
    return claimed


def keep_delivery_body(conn: Conn, delivery_id: str, body: bytes) -> bytes:
    """Store the event a delivery sends unless one is stored; return the stored one."""
    with transaction(conn):
        row = fetch_one(conn, "deliveries.keep_body", {"id": delivery_id, "body": body})
    return body if row is None else bytes(row[0])


def finish_delivery(conn: Conn, outcome: AttemptOutcome, now: float) -> bool:
    """Record an attempt's answer; move the delivery on if its lease is still held."""
    params = outcome_params(outcome, now)
    with transaction(conn):
        rowcount(conn, "deliveries.finish_attempt", params)
        rowcount(conn, "metric_totals.add", total_params(attempt_total(outcome)))
        held = rowcount(conn, "deliveries.finish", params) == 1
        rowcount(conn, "deliveries.drop_orphan_attempts", params)
        rowcount(conn, "deliveries.drop_orphan", params)
    return held


def list_deliveries(conn: Conn, tenant: str, job_id: str, now: float) -> list[DeliveryRow] | None:
    """A job's deliveries with their attempts; None if there is no such job."""
    if job_version(conn, tenant, job_id, now) is None:
        return None
    params = {"job_id": job_id, "tenant": tenant}
    return delivery_rows(
        fetch_all(conn, "deliveries.list", params),
        fetch_all(conn, "deliveries.list_attempts", params),
    )


def redeliver(conn: Conn, tenant: str, job_id: str, now: float) -> int | None:
    """Queue a new round of a job's deliveries, due now; None if there is no such job."""
    with transaction(conn):
        if job_version(conn, tenant, job_id, now) is None:
            return None
        return rowcount(
            conn, "deliveries.redeliver", {"job_id": job_id, "tenant": tenant, "now": now}
        )


def job_callback(conn: Conn, tenant: str, job_id: str, now: float) -> tuple[str, str | None] | None:
    """The job's callback_url and status base, if it has a callback."""
    row = fetch_one(conn, "job_callback", {"id": job_id, "tenant": tenant, "now": now})
    return None if row is None else (row[0], row[1])


def find_secret(conn: Conn, tenant: str) -> WebhookSecret | None:
    """The tenant's secret, if it has one."""
    found = fetch_one(conn, "webhook_secrets.select", {"tenant": tenant})
    return None if found is None else WebhookSecret(*found)


def webhook_secret(
    conn: Conn, tenant: str, candidate: str, now: float, *, rotate: bool
) -> WebhookSecret:
    """The tenant's secret, created from `candidate` on first use (or rotated to it)."""
    params = {"tenant": tenant, "secret": candidate, "now": now}
    found = fetch_one(conn, "webhook_secrets.select", params)
    if found is None or rotate:
        name = "webhook_secrets.rotate" if rotate else "webhook_secrets.create"
        with in_transaction(conn):
            rowcount(conn, name, params)
            found = fetch_one(conn, "webhook_secrets.select", params)
    secret, previous, rotated_at = found
    return WebhookSecret(secret=secret, previous=previous, rotated_at=rotated_at)
