"""SQLite: what workers do — claim, finish, renew, requeue, release, purge."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from joblot.models import JobState, after_claim, after_finish, after_requeue, failure_entry
from joblot.store import Claim, ClaimedItem, Finish, FinishedItem
from joblot.store.sqlite_base import SQLiteBase


class _Refused(Exception):
    """Rolls back a finish whose items are no longer all held by the lease."""


def _as_item(payload: bytes) -> dict[str, Any]:
    item = orjson.loads(payload)
    return item if isinstance(item, dict) else {}


class SQLiteWork(SQLiteBase):
    """The worker-side operations of the SQLite store."""

    async def claim_items(
        self, worker_id: str, job_types: list[str], limit: int, now: float, lease_seconds: float
    ) -> Claim | None:
        """Lease a batch of the least recently served runnable job."""
        return await self._write(self._claim_items, worker_id, job_types, limit, now, lease_seconds)

    def _claim_items(
        self,
        conn: sqlite3.Connection,
        worker_id: str,
        job_types: list[str],
        limit: int,
        now: float,
        lease_seconds: float,
    ) -> Claim | None:
        types = orjson.dumps(job_types).decode()
        # A cheap read first: an idle worker polling an idle database takes no write lock.
        if conn.execute(self._q["claim_items.pick_job"], {"job_types": types}).fetchone() is None:
            return None
        with self._transaction(conn):
            picked = conn.execute(self._q["claim_items.pick_job"], {"job_types": types}).fetchone()
            if picked is None:
                return None
            job_id, job_type = picked
            lease_id = conn.execute(
                self._q["claim_items.insert_lease"],
                {"job_id": job_id, "worker_id": worker_id, "expires_at": now + lease_seconds},
            ).lastrowid
            assert lease_id is not None
            rows = conn.execute(
                self._q["claim_items.lease_items"],
                {"job_id": job_id, "lease_id": lease_id, "limit": limit},
            ).fetchall()
            old = self._state(conn, job_id)
            assert old is not None  # picked in this very transaction
            self._save_state(
                conn, job_id, old, after_claim(old, len(rows)), now, 0.0, claimed_at=now
            )
        items = [ClaimedItem(i, p, a) for i, p, a in sorted(rows)]
        return Claim(lease_id, job_id, job_type, items)

    async def finish_items(
        self,
        lease_id: int,
        items: list[FinishedItem],
        message: str | None,
        final: bool,
        now: float,
        retention: float,
    ) -> Finish:
        """Record results if the lease is still held; otherwise refuse them all."""
        return await self._write(
            self._finish_items, lease_id, items, message, final, now, retention
        )

    def _finish_items(
        self,
        conn: sqlite3.Connection,
        lease_id: int,
        items: list[FinishedItem],
        message: str | None,
        final: bool,
        now: float,
        retention: float,
    ) -> Finish:
        try:
            return self._finish_held_items(conn, lease_id, items, message, final, now, retention)
        except _Refused:
            return Finish(accepted=False)

    def _finish_held_items(
        self,
        conn: sqlite3.Connection,
        lease_id: int,
        items: list[FinishedItem],
        message: str | None,
        final: bool,
        now: float,
        retention: float,
    ) -> Finish:
        with self._transaction(conn):
            lease = conn.execute(self._q["finish_items.lease"], {"lease_id": lease_id}).fetchone()
            if lease is None or lease[1] < now:
                raise _Refused()
            job_id = lease[0]
            taken = conn.executemany(
                self._q["finish_items.take_item"], ((job_id, it.index, lease_id) for it in items)
            ).rowcount
            if taken != len(items):
                raise _Refused()
            conn.executemany(
                self._q["finish_items.insert_result"],
                ((job_id, it.index, int(it.success), it.entry) for it in items),
            )
            old = self._state(conn, job_id)
            if old is None:  # purged while this lease was out
                raise _Refused()
            failed = sum(1 for it in items if not it.success)
            new = after_finish(old, len(items), failed, message, now)
            self._save_state(conn, job_id, old, new, now, retention)
            if final:
                conn.execute(self._q["leases.release_if_done"], {"lease_id": lease_id})
        return Finish(accepted=True, job_status=new.status)

    async def renew_leases(self, lease_ids: list[int], now: float, until: float) -> set[int]:
        """Extend the leases still held; a lapsed one is not revived."""
        if not lease_ids:
            return set()
        return await self._write(self._renew_leases, lease_ids, now, until)

    def _renew_leases(
        self, conn: sqlite3.Connection, lease_ids: list[int], now: float, until: float
    ) -> set[int]:
        with self._transaction(conn):
            rows = conn.execute(
                self._q["renew_leases"],
                {"lease_ids": orjson.dumps(lease_ids).decode(), "now": now, "until": until},
            ).fetchall()
        return {r[0] for r in rows}

    async def requeue_expired(self, now: float, max_attempts: int, retention: float) -> int:
        """Return the items of lapsed leases to the queue; fail those out of attempts."""
        return await self._write(self._requeue_expired, now, max_attempts, retention)

    def _requeue_expired(
        self, conn: sqlite3.Connection, now: float, max_attempts: int, retention: float
    ) -> int:
        if conn.execute(self._q["requeue_expired.leases"], {"now": now}).fetchone() is None:
            return 0
        count = 0
        with self._transaction(conn):
            for lease_id, job_id in conn.execute(
                self._q["requeue_expired.leases"], {"now": now}
            ).fetchall():
                count += self._requeue_lease(conn, lease_id, job_id, now, max_attempts, retention)
        return count

    async def release_lease(self, lease_id: int, now: float) -> int:
        """Give back the unstarted items of a lease at once (a worker stopping cleanly)."""
        return await self._write(self._release_lease, lease_id, now)

    def _release_lease(self, conn: sqlite3.Connection, lease_id: int, now: float) -> int:
        with self._transaction(conn):
            lease = conn.execute(self._q["finish_items.lease"], {"lease_id": lease_id}).fetchone()
            if lease is None:
                return 0
            conn.execute(self._q["release_lease.refund"], {"lease_id": lease_id})
            return self._requeue_lease(conn, lease_id, lease[0], now, 1 << 30, 0.0)

    def _requeue_lease(
        self,
        conn: sqlite3.Connection,
        lease_id: int,
        job_id: str,
        now: float,
        max_attempts: int,
        retention: float,
    ) -> int:
        rows = conn.execute(self._q["requeue_expired.items"], {"lease_id": lease_id}).fetchall()
        spent = [(i, p, a) for i, p, a in rows if a >= max_attempts]
        requeued = conn.execute(
            self._q["requeue_expired.requeue"], {"lease_id": lease_id, "max_attempts": max_attempts}
        ).rowcount
        conn.execute(self._q["leases.release"], {"lease_id": lease_id})
        old = self._state(conn, job_id)
        if old is None:  # the job was purged while its lease was out: nothing to return to
            return len(rows)
        new = after_requeue(old, requeued)
        if spent:
            new = self._fail_spent(conn, job_id, lease_id, spent, new, now)
        self._save_state(conn, job_id, old, new, now, retention)
        return len(rows)

    def _fail_spent(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        lease_id: int,
        spent: list[tuple[int, bytes, int]],
        state: JobState,
        now: float,
    ) -> JobState:
        (action,) = conn.execute(self._q["requeue_expired.job_action"], {"id": job_id}).fetchone()
        for index, payload, attempts in spent:
            details = (
                f"the item's worker stopped responding {attempts} times "
                "(its lease expired); giving up"
            )
            entry = failure_entry(index, _as_item(payload), action, "WorkerLost", details)
            conn.execute(self._q["finish_items.take_item"], (job_id, index, lease_id))
            conn.execute(
                self._q["finish_items.insert_result"], (job_id, index, 0, orjson.dumps(entry))
            )
        return after_finish(state, len(spent), len(spent), None, now)

    async def purge_expired(self, now: float) -> int:
        """Delete jobs past their retention, in short transactions."""
        return await self._write(self._purge_expired, now)

    def _purge_expired(self, conn: sqlite3.Connection, now: float) -> int:
        ids = [i for (i,) in conn.execute(self._q["purge_expired.jobs"], {"now": now})]
        for job_id in ids:
            self._purge_job(conn, job_id)
        return len(ids)
