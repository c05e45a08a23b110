"""The SQLite backend: one file in WAL mode, shared by the API and worker processes of a host."""

from __future__ import annotations

import sqlite3

from joblot.errors import IdempotencyKeyReused, JobFinished, TooManyJobs
from joblot.models import after_stop
from joblot.store import (
    JobRow,
    NewJob,
    Page,
    TokenRow,
    job_params,
    job_state,
    keyset_page,
    keyset_query,
    queued_row,
)
from joblot.store.sqlite_base import job_row
from joblot.store.sqlite_work import SQLiteWork


class SQLiteStore(SQLiteWork):
    """Store on one SQLite file: submit, read, stop jobs and manage tokens."""

    async def create_token(self, token_id: str, tenant: str, digest: str, now: float) -> None:
        """Store a new token's digest."""
        args = {"id": token_id, "tenant": tenant, "digest": digest, "now": now}
        await self._write(self._execute_in_transaction, "tokens.create", args)

    async def list_tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included, oldest first."""
        rows = await self._read(self._fetch, "tokens.list", {})
        return [TokenRow(*row) for row in rows]

    async def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke a live token."""
        args = {"id": token_id, "now": now}
        return await self._write(self._execute_in_transaction, "tokens.revoke", args) == 1

    async def find_token(self, digest: str) -> tuple[str, str] | None:
        """(token id, tenant) of the live token with this digest."""
        rows = await self._read(self._fetch, "tokens.find", {"digest": digest})
        return (rows[0][0], rows[0][1]) if rows else None

    async def count_tokens(self) -> int:
        """How many live tokens there are."""
        rows = await self._read(self._fetch, "tokens.count_active", {})
        return int(rows[0][0])

    async def submit_job(self, job: NewJob) -> tuple[JobRow, bool]:
        """Insert the job and its items in one transaction (or find the idempotent twin)."""
        return await self._write(self._submit_job, job)

    def _submit_job(self, conn: sqlite3.Connection, job: NewJob) -> tuple[JobRow, bool]:
        with self._transaction(conn):
            if job.idempotency_key is not None:
                existing = self._find_idempotent(conn, job)
                if existing is not None:
                    return existing, False
            if job.max_active_jobs is not None:
                self._check_quota(conn, job.tenant, job.max_active_jobs)
            conn.execute(self._q["submit_job.insert_job"], job_params(job))
            conn.executemany(
                self._q["submit_job.insert_item"],
                ((job.id, i, p) for i, p in enumerate(job.payloads)),
            )
        return queued_row(job), True

    def _check_quota(self, conn: sqlite3.Connection, tenant: str, limit: int) -> None:
        (active,) = conn.execute(self._q["submit_job.count_active"], {"tenant": tenant}).fetchone()
        if active >= limit:
            raise TooManyJobs(
                f"this tenant already has {active} queued or working jobs, the most allowed; "
                "wait for some to finish",
                retry_after=5,
            )

    def _find_idempotent(self, conn: sqlite3.Connection, job: NewJob) -> JobRow | None:
        found = conn.execute(
            self._q["submit_job.find_idempotent"],
            {"tenant": job.tenant, "key": job.idempotency_key},
        ).fetchone()
        if found is None:
            return None
        job_id, request_hash, expires_at = found
        if expires_at is not None and expires_at <= job.created_at:
            self._purge_job(conn, job_id)  # the key's job is past retention: start afresh
            return None
        if request_hash != job.request_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different request; "
                "use a new key for a new job"
            )
        row = self._get_job(conn, job.tenant, job_id, job.created_at, 0)
        assert row is not None
        return row

    async def get_job(self, tenant: str, job_id: str, now: float, inline: int) -> JobRow | None:
        """One primary-key lookup, plus a bounded range scan for inline results."""
        return await self._read(self._get_job, tenant, job_id, now, inline)

    async def get_jobs(
        self, tenant: str, job_ids: list[str], now: float, inline: int
    ) -> list[JobRow]:
        """The jobs that exist among `job_ids`, in the order asked."""
        return await self._read(self._get_jobs, tenant, job_ids, now, inline)

    def _get_jobs(
        self, conn: sqlite3.Connection, tenant: str, job_ids: list[str], now: float, inline: int
    ) -> list[JobRow]:
        rows = (self._get_job(conn, tenant, job_id, now, inline) for job_id in job_ids)
        return [row for row in rows if row is not None]

    async def list_jobs(
        self,
        tenant: str,
        now: float,
        after: str | None,
        before: str | None,
        size: int,
        inline: int,
    ) -> Page[JobRow]:
        """A page of jobs in listing order, each with its results inline when small."""
        return await self._read(self._list_jobs, tenant, now, after, before, size, inline)

    def _list_jobs(
        self,
        conn: sqlite3.Connection,
        tenant: str,
        now: float,
        after: str | None,
        before: str | None,
        size: int,
        inline: int,
    ) -> Page[JobRow]:
        name, key = keyset_query("list_jobs", after, before, "")
        rows = conn.execute(
            self._q[name], {"tenant": tenant, "key": key, "now": now, "limit": size + 1}
        ).fetchall()
        page, has_more = keyset_page(rows, size, before is not None)
        return Page([job_row(r, self._inline_results(conn, r, inline)) for r in page], has_more)

    async def list_results(
        self, tenant: str, job_id: str, now: float, after: int | None, before: int | None, size: int
    ) -> Page[tuple[int, bytes]] | None:
        """A page of a job's result entries by index."""
        return await self._read(self._list_results, tenant, job_id, now, after, before, size)

    def _list_results(
        self,
        conn: sqlite3.Connection,
        tenant: str,
        job_id: str,
        now: float,
        after: int | None,
        before: int | None,
        size: int,
    ) -> Page[tuple[int, bytes]] | None:
        if self._job_version(conn, tenant, job_id, now) is None:
            return None
        name, idx = keyset_query("list_results", after, before, -1)
        rows = conn.execute(self._q[name], {"id": job_id, "idx": idx, "limit": size + 1}).fetchall()
        page, has_more = keyset_page(rows, size, before is not None)
        return Page([(i, e) for i, e in page], has_more)

    async def job_version(self, tenant: str, job_id: str, now: float) -> int | None:
        """The job's change counter, for ETags and long polls."""
        return await self._read(self._job_version, tenant, job_id, now)

    async def stop_job(
        self, tenant: str | None, job_id: str, message: str | None, now: float, retention: float
    ) -> JobRow | None:
        """Fail an unfinished job; None when there is no such job for this tenant."""
        return await self._write(self._stop_job, tenant, job_id, message, now, retention)

    def _stop_job(
        self,
        conn: sqlite3.Connection,
        tenant: str | None,
        job_id: str,
        message: str | None,
        now: float,
        retention: float,
    ) -> JobRow | None:
        with self._transaction(conn):
            if tenant is None:
                row = conn.execute(self._q["job_state.select"], {"id": job_id}).fetchone()
            else:
                row = conn.execute(
                    self._q["job_state.select_for_tenant"],
                    {"id": job_id, "tenant": tenant, "now": now},
                ).fetchone()
            if row is None:
                return None
            old = job_state(row)
            if old.status.finished:
                raise JobFinished(
                    f"job {job_id} is already {old.status.value}; "
                    "only queued or working jobs can be stopped"
                )
            self._save_state(conn, job_id, old, after_stop(old, message), now, retention)
        return None if tenant is None else self._get_job(conn, tenant, job_id, now, 0)
