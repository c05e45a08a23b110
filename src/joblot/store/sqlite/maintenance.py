"""SQLite: the cluster-wide chores — requeue lapsed leases, purge expired jobs — and the
lead that makes one process of all those sharing the file run them at a time."""

from __future__ import annotations

from joblot.store import LapsedLease
from joblot.store.common import LEASES_EXPIRED, lapsed_lease, purged_totals, total_params
from joblot.store.sqlite.connection import SQL, Conn, fetch_all, fetch_one, in_transaction, rowcount
from joblot.store.sqlite.work import requeue_lease


def lapsed_leases(conn: Conn, now: float) -> list[LapsedLease]:
    """The leases requeue_expired would requeue at `now`, with their jobs and workers."""
    return [lapsed_lease(row) for row in fetch_all(conn, "lapsed_leases", {"now": now})]


def requeue_expired(conn: Conn, now: float, max_attempts: int, retention: float) -> int:
    """Return the items of lapsed leases to the queue; fail those out of attempts."""
    if fetch_one(conn, "requeue_expired.leases", {"now": now}) is None:
        return 0  # the common case, without taking the write lock
    count = 0
    with in_transaction(conn):
        for lease_id, job_id in fetch_all(conn, "requeue_expired.leases", {"now": now}):
            count += requeue_lease(
                conn, lease_id, job_id, now=now, max_attempts=max_attempts, retention=retention
            )
            conn.execute(SQL["metric_totals.add"], total_params(LEASES_EXPIRED))
    return count


def expired(conn: Conn, now: float) -> tuple[list[str], list[str]]:
    """The ids of jobs past their retention, and of loads whose submit died or gave up."""
    jobs = [i for (i,) in fetch_all(conn, "purge_expired.jobs", {"now": now})]
    loads = [i for (i,) in fetch_all(conn, "purge_expired.loads", {"now": now})]
    return jobs, loads


def purge_job(conn: Conn, job_id: str) -> None:
    """Delete a job in bounded steps (each its own transaction unless one is open)."""
    while not purge_step(conn, job_id):
        continue


def purge_step(conn: Conn, job_id: str) -> bool:
    """One bounded step of deleting a job — some items, else some results, else the job row
    and its leases — in one short transaction (unless one is open); True once it is gone."""
    with in_transaction(conn):
        for name in ("purge_expired.items", "purge_expired.results"):
            if rowcount(conn, name, {"id": job_id}) > 0:
                return False
        counted = fetch_one(conn, "purge_expired.counts", {"id": job_id})
        rowcount(conn, "purge_expired.delivery_attempts", {"id": job_id})
        rowcount(conn, "purge_expired.deliveries", {"id": job_id})
        rowcount(conn, "purge_expired.leases", {"id": job_id})
        if counted is not None:  # what it counted stays counted
            totals = purged_totals(counted)
            conn.executemany(SQL["metric_totals.add"], [total_params(t) for t in totals])
        rowcount(conn, "purge_expired.job", {"id": job_id})
    return True


def abandon_step(conn: Conn, job_id: str) -> bool:
    """One bounded step of deleting what a load that will not finish stored; True once gone.

    The load is marked first, in the same transaction as the first delete, so that no
    further step of its submit can commit (each checks the mark under the write lock).
    """
    with in_transaction(conn):
        rowcount(conn, "abandon_load.mark", {"id": job_id})
        if rowcount(conn, "purge_expired.items", {"id": job_id}) > 0:
            return False
        rowcount(conn, "abandon_load.forget", {"id": job_id})
    return True


def try_lead(conn: Conn, chore: str, holder: str, now: float, until: float) -> bool:
    """Take or keep the lead of `chore` until `until`, unless another holder's is live."""
    params = {"chore": chore, "holder": holder, "now": now, "until": until}
    with in_transaction(conn):
        return fetch_one(conn, "maintenance.lead", params) is not None
