"""The PostgreSQL backend: API nodes and worker processes on many machines share one database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from joblot.errors import ConfigError, IdempotencyKeyReused, TooManyJobs, Unavailable
from joblot.models import Status
from joblot.store import (
    Claim,
    Finish,
    FinishedItem,
    JobRow,
    NewJob,
    Page,
    TokenRow,
    keyset_page,
    keyset_query,
    queued_row,
)
from joblot.store import pgwork as work
from joblot.store.pgnotify import WorkListener
from joblot.store.pgsubmit import (
    insert_job,
    queries,
    submit_job_in_transaction,
    submit_job_in_transaction_sync,
)
from joblot.store.pgwork import Conn, Refused, Row, fetch_all, fetch_one, run
from joblot.store.sql import load_migrations

__all__ = ["PostgresStore", "submit_job_in_transaction", "submit_job_in_transaction_sync"]

CONNECT_TIMEOUT = 10  # seconds; libpq would wait minutes for an unreachable host
# The pool retries a failed connection with doubling pauses (1, 2, 4, 8 ... s, up to this
# long); giving up soon makes the next request start afresh at once, so after an outage of
# any length requests are served again within seconds of the database's return.
RECONNECT_SECONDS = 3.0


def _job_row(row: Row) -> JobRow:
    id_, job_type, status, total, progress, message, version, list_key, results = row
    inline = None if results is None else list(results)
    return JobRow(
        id_, job_type, Status(status), total, progress, message, version, inline, list_key
    )


class PostgresStore:
    """Store on a PostgreSQL database, through a pool of connections opened on first use."""

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 5.0
    ) -> None:
        try:
            given = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"cannot read the database URL {url!r}: {exc}") from exc
        extra = {} if "connect_timeout" in given else {"connect_timeout": CONNECT_TIMEOUT}
        self._conninfo = make_conninfo(url, **extra)
        self._sizes = (min_size, max_size)
        self._timeout = timeout  # how long a caller waits for a connection before a 503
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._opening = asyncio.Lock()
        q = queries()
        self._listener = WorkListener(self._conninfo, q["work.listen"], q["work.heartbeat"])

    # -- plumbing ---------------------------------------------------------------------------

    async def _open_pool(self) -> AsyncConnectionPool[Conn]:
        async with self._opening:
            if self._pool is None:
                # `check` tests each connection as it is handed out, so after a database
                # restart dead connections are replaced instead of failing a request each.
                pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                    self._conninfo,
                    kwargs={"autocommit": True},
                    min_size=self._sizes[0],
                    max_size=self._sizes[1],
                    timeout=self._timeout,
                    reconnect_timeout=RECONNECT_SECONDS,
                    open=False,
                    check=AsyncConnectionPool.check_connection,
                    name="joblot",
                )
                await pool.open()
                self._pool = pool
            return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        """A pooled autocommit connection; losing the database raises Unavailable (503)."""
        pool = self._pool or await self._open_pool()
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:  # the pool's PoolTimeout is one too
            raise Unavailable(
                f"the database is unreachable or overloaded ({exc}); retry in a few seconds"
            ) from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Conn]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    async def wait_for_work(self, timeout: float) -> None:
        """Return at the next NOTIFY on `joblot_work`, or after `timeout` seconds."""
        await self._listener.wait(timeout)

    async def listening(self, timeout: float) -> bool:
        """Start the LISTEN connection now; True once it is up (within `timeout` seconds)."""
        return await self._listener.listening(timeout)

    async def close(self) -> None:
        """Stop listening and close every pooled connection."""
        await self._listener.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- migrations -------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply missing migrations, one transaction each, under an advisory lock."""
        applied = []
        for migration in load_migrations("postgres"):
            async with self._transaction() as conn:
                await run(conn, "migrations.lock")
                await run(conn, "migrations.create_table")
                done = {v for (v,) in await fetch_all(conn, "migrations.applied")}
                if migration.version in done:
                    continue
                await conn.execute(migration.sql)  # several statements: allowed without params
                record = {"version": migration.version, "name": migration.name, "now": time.time()}
                await run(conn, "migrations.record", record)
                applied.append(migration.version)
        return applied

    async def schema_version(self) -> tuple[int, int]:
        """(applied, latest) migration numbers."""
        latest = len(load_migrations("postgres"))
        async with self._connection() as conn:
            exists = await fetch_one(conn, "migrations.exists")
            if exists is None or not exists[0]:
                return 0, latest
            versions = [v for (v,) in await fetch_all(conn, "migrations.applied")]
        return (max(versions) if versions else 0), latest

    # -- submit and read --------------------------------------------------------------------

    async def submit_job(self, job: NewJob) -> tuple[JobRow, bool]:
        """Insert the job and its items in one transaction (or find the idempotent twin)."""
        async with self._transaction() as conn:
            if job.idempotency_key is not None:
                existing = await self._find_idempotent(conn, job)
                if existing is not None:
                    return existing, False
            if job.max_active_jobs is not None:
                await self._check_quota(conn, job.tenant, job.max_active_jobs)
            if await insert_job(conn, job):
                return queued_row(job), True
            # A concurrent submit with the same key committed first: answer with its job.
            existing = await self._find_idempotent(conn, job)
            if existing is None:
                raise Unavailable("a submission with this Idempotency-Key was in flight; retry")
            return existing, False

    async def _check_quota(self, conn: Conn, tenant: str, limit: int) -> None:
        await run(conn, "submit_job.lock_tenant", {"tenant": tenant})
        found = await fetch_one(conn, "submit_job.count_active", {"tenant": tenant})
        active = 0 if found is None else found[0]
        if active >= limit:
            raise TooManyJobs(
                f"this tenant already has {active} queued or working jobs, the most allowed; "
                "wait for some to finish",
                retry_after=5,
            )

    async def _find_idempotent(self, conn: Conn, job: NewJob) -> JobRow | None:
        key = {"tenant": job.tenant, "key": job.idempotency_key}
        found = await fetch_one(conn, "submit_job.find_idempotent", key)
        if found is None:
            return None
        job_id, request_hash, expires_at = found
        if expires_at is not None and expires_at <= job.created_at:
            await work.purge_job(conn, job_id)  # the key's job is past retention: start afresh
            return None
        if request_hash != job.request_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different request; "
                "use a new key for a new job"
            )
        params = {"id": job_id, "tenant": job.tenant, "now": job.created_at, "inline": 0}
        row = await fetch_one(conn, "get_job.select", params)
        return None if row is None else _job_row(row)

    async def get_job(self, tenant: str, job_id: str, now: float, inline: int) -> JobRow | None:
        """One primary-key lookup, with the inline results in the same round trip."""
        params = {"id": job_id, "tenant": tenant, "now": now, "inline": inline}
        async with self._connection() as conn:
            row = await fetch_one(conn, "get_job.select", params)
        return None if row is None else _job_row(row)

    async def get_jobs(
        self, tenant: str, job_ids: list[str], now: float, inline: int
    ) -> list[JobRow]:
        """The jobs that exist among `job_ids`, in the order asked, in one query."""
        params = {"ids": job_ids, "tenant": tenant, "now": now, "inline": inline}
        async with self._connection() as conn:
            rows = await fetch_all(conn, "get_jobs.select", params)
        return [_job_row(r) for r in rows]

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
        name, key = keyset_query("list_jobs", after, before, "")
        params = {"tenant": tenant, "key": key, "now": now, "limit": size + 1, "inline": inline}
        async with self._connection() as conn:
            rows = await fetch_all(conn, name, params)
        page, has_more = keyset_page(rows, size, before is not None)
        return Page([_job_row(r) for r in page], has_more)

    async def list_results(
        self, tenant: str, job_id: str, now: float, after: int | None, before: int | None, size: int
    ) -> Page[tuple[int, bytes]] | None:
        """A page of a job's result entries by index."""
        name, idx = keyset_query("list_results", after, before, -1)
        async with self._connection() as conn:
            job = {"id": job_id, "tenant": tenant, "now": now}
            if await fetch_one(conn, "job_version", job) is None:
                return None
            rows = await fetch_all(conn, name, {"id": job_id, "idx": idx, "limit": size + 1})
        page, has_more = keyset_page(rows, size, before is not None)
        return Page([(i, e) for i, e in page], has_more)

    async def job_version(self, tenant: str, job_id: str, now: float) -> int | None:
        """The job's change counter, for ETags and long polls."""
        async with self._connection() as conn:
            row = await fetch_one(conn, "job_version", {"id": job_id, "tenant": tenant, "now": now})
        return None if row is None else int(row[0])

    # -- lifecycle (the transactions themselves are in pgwork.py) ----------------------------

    async def stop_job(
        self, tenant: str | None, job_id: str, message: str | None, now: float, retention: float
    ) -> JobRow | None:
        """Fail an unfinished job; None when there is no such job for this tenant."""
        async with self._transaction() as conn:
            if not await work.stop(conn, tenant, job_id, message, now, retention):
                return None
        return None if tenant is None else await self.get_job(tenant, job_id, now, 0)

    async def claim_items(
        self, worker_id: str, job_types: list[str], limit: int, now: float, lease_seconds: float
    ) -> Claim | None:
        """Lease a batch of the least recently served runnable job."""
        async with self._connection() as conn:
            # The cheap read first: an idle worker on an idle database locks nothing.
            found = await fetch_one(conn, "claim_items.any_runnable", {"job_types": job_types})
            if found is None or not found[0]:
                return None
            try:
                async with conn.transaction():
                    return await work.claim(conn, worker_id, job_types, limit, now, lease_seconds)
            except Refused:  # another worker took the items, or the job stopped: try again
                return None

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
        try:
            async with self._transaction() as conn:
                return await work.finish(conn, lease_id, items, message, final, now, retention)
        except Refused:
            return Finish(accepted=False)

    async def renew_leases(self, lease_ids: list[int], now: float, until: float) -> set[int]:
        """Extend the leases still held; a lapsed one is not revived."""
        if not lease_ids:
            return set()
        params = {"lease_ids": lease_ids, "now": now, "until": until}
        async with self._connection() as conn:
            rows = await fetch_all(conn, "renew_leases", params)
        return {r[0] for r in rows}

    async def requeue_expired(self, now: float, max_attempts: int, retention: float) -> int:
        """Return the items of lapsed leases to the queue; fail those out of attempts."""
        count = 0
        async with self._connection() as conn:
            for lease_id, job_id in await fetch_all(conn, "requeue_expired.leases", {"now": now}):
                count += await work.requeue_lease(
                    conn, lease_id, job_id, now, max_attempts, retention, releasing=False
                )
        return count

    async def release_lease(self, lease_id: int, now: float) -> int:
        """Give back the unstarted items of a lease at once (a worker stopping cleanly)."""
        async with self._connection() as conn:
            lease = await fetch_one(conn, "finish_items.lease", {"lease_id": lease_id})
            if lease is None:
                return 0
            return await work.requeue_lease(
                conn, lease_id, lease[0], now, 1 << 30, 0.0, releasing=True
            )

    async def purge_expired(self, now: float) -> int:
        """Delete jobs past their retention, in short transactions."""
        async with self._connection() as conn:
            ids = [i for (i,) in await fetch_all(conn, "purge_expired.jobs", {"now": now})]
            for job_id in ids:
                await work.purge_job(conn, job_id)
        return len(ids)

    # -- tokens -----------------------------------------------------------------------------

    async def create_token(self, token_id: str, tenant: str, digest: str, now: float) -> None:
        """Store a new token's digest."""
        await self._run(
            "tokens.create", {"id": token_id, "tenant": tenant, "digest": digest, "now": now}
        )

    async def list_tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included, oldest first."""
        async with self._connection() as conn:
            rows = await fetch_all(conn, "tokens.list")
        return [TokenRow(*row) for row in rows]

    async def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke a live token."""
        return await self._run("tokens.revoke", {"id": token_id, "now": now}) == 1

    async def find_token(self, digest: str) -> tuple[str, str] | None:
        """(token id, tenant) of the live token with this digest."""
        async with self._connection() as conn:
            row = await fetch_one(conn, "tokens.find", {"digest": digest})
        return None if row is None else (row[0], row[1])

    async def count_tokens(self) -> int:
        """How many live tokens there are."""
        async with self._connection() as conn:
            row = await fetch_one(conn, "tokens.count_active")
        return 0 if row is None else int(row[0])

    async def _run(self, name: str, params: dict[str, Any]) -> int:
        async with self._connection() as conn:
            return await run(conn, name, params)
