"""PostgreSQL: the cluster-wide chores — requeue lapsed leases, purge expired jobs — and the
lead that makes one process of all the nodes sharing the database run them at a time."""

from __future__ import annotations

from joblot.store import LapsedLease
from joblot.store.common import lapsed_lease, purged_totals, total_params
from joblot.store.postgres.connection import Conn, fetch_all, fetch_one, rowcount
from joblot.store.postgres.work import requeue_lapsed_lease


async def lapsed_leases(conn: Conn, now: float) -> list[LapsedLease]:
    """The leases requeue_expired would requeue at `now`, with their jobs and workers."""
    return [lapsed_lease(row) for row in await fetch_all(conn, "lapsed_leases", {"now": now})]


async def requeue_expired(conn: Conn, now: float, max_attempts: int, retention: float) -> int:
    """Return the items of lapsed leases to the queue; fail those out of attempts."""
    count = 0
    for lease_id, job_id in await fetch_all(conn, "requeue_expired.leases", {"now": now}):
        count += await requeue_lapsed_lease(
            conn, lease_id, job_id, now=now, max_attempts=max_attempts, retention=retention
        )
    return count


async def purge_expired(conn: Conn, now: float) -> int:
    """Delete jobs past their retention, in short transactions."""
    ids = [i for (i,) in await fetch_all(conn, "purge_expired.jobs", {"now": now})]
    for job_id in ids:
        await purge_job(conn, job_id)
    return len(ids)


async def purge_job(conn: Conn, job_id: str) -> None:
    """Delete a job in bounded steps (each its own transaction unless one is open)."""
    for name in ("purge_expired.items", "purge_expired.results"):
        while await rowcount(conn, name, {"id": job_id}) > 0:
            continue
    async with conn.transaction():  # the job and what it counted go together
        counted = await fetch_one(conn, "purge_expired.counts", {"id": job_id})
        await rowcount(conn, "purge_expired.delivery_attempts", {"id": job_id})
        await rowcount(conn, "purge_expired.deliveries", {"id": job_id})
        await rowcount(conn, "purge_expired.leases", {"id": job_id})
        if counted is not None:
            for total in purged_totals(counted):
                await rowcount(conn, "metric_totals.add", total_params(total))
        await rowcount(conn, "purge_expired.job", {"id": job_id})


async def try_lead(conn: Conn, chore: str, holder: str, now: float, until: float) -> bool:
    """Take or keep the lead of `chore` until `until`, unless another holder's is live."""
    params = {"chore": chore, "holder": holder, "now": now, "until": until}
    return await fetch_one(conn, "maintenance.lead", params) is not None
