"""The SQLite backend: one file in WAL mode, shared by the API and worker processes of a host."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson

from joblot.errors import (
    ConfigError,
    IdempotencyKeyReused,
    JobFinished,
    TooManyJobs,
    Unavailable,
)
from joblot.models import (
    JobState,
    Status,
    after_claim,
    after_finish,
    after_requeue,
    after_stop,
    failure_entry,
)
from joblot.store import (
    Claim,
    ClaimedItem,
    Finish,
    FinishedItem,
    JobRow,
    NewJob,
    Page,
    TokenRow,
    finished_prefix,
    unfinished_list_key,
)
from joblot.store.sql import load_migrations, load_queries

R = TypeVar("R")
_TRANSIENT = re.compile(r"locked|busy|unable to open|disk I/O")
_JOB_COLUMNS = "id, job_type, status, total, progress, message, version, list_key"


def _job_row(row: tuple[Any, ...], results: list[bytes] | None) -> JobRow:
    id_, job_type, status, total, progress, message, version, list_key = row
    return JobRow(
        id_, job_type, Status(status), total, progress, message, version, results, list_key
    )


def _job_state(row: tuple[Any, ...]) -> JobState:
    status, total, progress, failures, pending, message, message_set, max_failures = row[:8]
    skipped, cancelled = row[8:]
    return JobState(
        Status(status),
        total,
        progress,
        failures,
        pending,
        message,
        bool(message_set),
        max_failures,
        skipped,
        bool(cancelled),
    )


class SQLiteStore:
    """Store on one SQLite file: a writer thread with one connection, reader threads with theirs."""

    def __init__(self, path: str, readers: int = 4) -> None:
        if path != ":memory:" and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ConfigError(f"the folder of the database file {path!r} does not exist")
        self._path = path
        self._q = load_queries("sqlite")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="joblot-sqlite-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="joblot-sqlite-reader")

    # -- plumbing ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path, isolation_level=None, timeout=30.0, check_same_thread=False
            )
            # WAL lets readers run beside the one writer; NORMAL sync is durable across
            # process crashes, which is what leases protect against.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA cache_size = -65536")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _call(self, pool: ThreadPoolExecutor, fn: Callable[..., R], *args: Any) -> R:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, functools.partial(self._with_conn, fn, *args))
        except sqlite3.OperationalError as exc:
            if not _TRANSIENT.search(str(exc)):
                raise
            raise Unavailable(f"the database is busy or unreachable: {exc}") from exc

    def _with_conn(self, fn: Callable[..., R], *args: Any) -> R:
        return fn(self._conn(), *args)

    async def _write(self, fn: Callable[..., R], *args: Any) -> R:
        return await self._call(self._writer, fn, *args)

    async def _read(self, fn: Callable[..., R], *args: Any) -> R:
        return await self._call(self._readers, fn, *args)

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so two processes never deadlock
        # upgrading read locks, and the busy timeout applies.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- tokens -----------------------------------------------------------------------------

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

    def _execute_in_transaction(
        self, conn: sqlite3.Connection, name: str, args: dict[str, Any]
    ) -> int:
        with self._transaction(conn):
            return conn.execute(self._q[name], args).rowcount

    def _fetch(self, conn: sqlite3.Connection, name: str, args: dict[str, Any]) -> list[Any]:
        return conn.execute(self._q[name], args).fetchall()

    async def wait_for_work(self, timeout: float) -> None:
        """Differs by necessity from PostgreSQL: SQLite has no notifications, so idle workers
        poll (one cheap indexed read per `idle_poll_seconds`)."""
        await asyncio.sleep(timeout)

    async def close(self) -> None:
        """Close every connection and stop the threads."""
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # -- migrations -------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply missing migrations in one write transaction each."""
        return await self._write(self._migrate)

    def _migrate(self, conn: sqlite3.Connection) -> list[int]:
        conn.execute(self._q["migrations.create_table"])
        applied = []
        for migration in load_migrations("sqlite"):
            with self._transaction(conn):
                done = {v for (v,) in conn.execute(self._q["migrations.applied"])}
                if migration.version in done:
                    continue
                for statement in _split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    self._q["migrations.record"],
                    {"version": migration.version, "name": migration.name, "now": time.time()},
                )
                applied.append(migration.version)
        return applied

    async def schema_version(self) -> tuple[int, int]:
        """(applied, latest) migration numbers."""
        return await self._read(self._schema_version)

    def _schema_version(self, conn: sqlite3.Connection) -> tuple[int, int]:
        latest = len(load_migrations("sqlite"))
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'joblot_migrations'"
        ).fetchone()
        if not exists:
            return 0, latest
        versions = [v for (v,) in conn.execute(self._q["migrations.applied"])]
        return (max(versions) if versions else 0), latest

    # -- submit and read --------------------------------------------------------------------

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
            list_key = unfinished_list_key(job.created_at, job.id)
            conn.execute(
                self._q["submit_job.insert_job"],
                {
                    "id": job.id,
                    "tenant": job.tenant,
                    "job_type": job.job_type,
                    "action": job.action,
                    "total": len(job.payloads),
                    "max_failures": job.max_failures,
                    "idempotency_key": job.idempotency_key,
                    "request_hash": job.request_hash,
                    "created_at": job.created_at,
                    "list_key": list_key,
                },
            )
            conn.executemany(
                self._q["submit_job.insert_item"],
                ((job.id, i, p) for i, p in enumerate(job.payloads)),
            )
        row = JobRow(
            job.id, job.job_type, Status.QUEUED, len(job.payloads), 0, None, 1, None, list_key
        )
        return row, True

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

    def _get_job(
        self, conn: sqlite3.Connection, tenant: str, job_id: str, now: float, inline: int
    ) -> JobRow | None:
        row = conn.execute(
            self._q["get_job.select"], {"id": job_id, "tenant": tenant, "now": now}
        ).fetchone()
        if row is None:
            return None
        return _job_row(row, self._inline_results(conn, row, inline))

    def _inline_results(
        self, conn: sqlite3.Connection, row: tuple[Any, ...], inline: int
    ) -> list[bytes] | None:
        job_id, total, status = row[0], row[3], row[2]
        if total > inline or status == Status.QUEUED:
            return None
        return [e for (e,) in conn.execute(self._q["get_job.inline_results"], {"id": job_id})]

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
        name, key = (
            ("list_jobs.before", before) if before is not None else ("list_jobs.after", after or "")
        )
        rows = conn.execute(
            self._q[name], {"tenant": tenant, "key": key, "now": now, "limit": size + 1}
        ).fetchall()
        has_more = len(rows) > size
        rows = rows[:size]
        if before is not None:
            rows.reverse()
        return Page([_job_row(r, self._inline_results(conn, r, inline)) for r in rows], has_more)

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
        name, idx = (
            ("list_results.before", before)
            if before is not None
            else ("list_results.after", -1 if after is None else after)
        )
        rows = conn.execute(self._q[name], {"id": job_id, "idx": idx, "limit": size + 1}).fetchall()
        has_more = len(rows) > size
        rows = rows[:size]
        if before is not None:
            rows.reverse()
        return Page([(i, e) for i, e in rows], has_more)

    async def job_version(self, tenant: str, job_id: str, now: float) -> int | None:
        """The job's change counter, for ETags and long polls."""
        return await self._read(self._job_version, tenant, job_id, now)

    def _job_version(
        self, conn: sqlite3.Connection, tenant: str, job_id: str, now: float
    ) -> int | None:
        row = conn.execute(
            self._q["job_version"], {"id": job_id, "tenant": tenant, "now": now}
        ).fetchone()
        return None if row is None else int(row[0])

    # -- lifecycle --------------------------------------------------------------------------

    def _save_state(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        old: JobState,
        new: JobState,
        now: float,
        retention: float,
        claimed_at: float | None = None,
    ) -> None:
        finished = new.status.finished and not old.status.finished
        visible = (new.status, new.progress, new.message) != (old.status, old.progress, old.message)
        conn.execute(
            self._q["job_state.save"],
            {
                "id": job_id,
                "status": new.status.value,
                "progress": new.progress,
                "failures": new.failures,
                "pending": new.pending,
                "message": new.message,
                "message_set": int(new.message_set),
                "skipped": new.skipped,
                "cancelled": int(new.cancelled),
                "bump": int(visible),
                "claimed_at": claimed_at,
                "finished": int(finished),
                "now": now,
                "retention": retention,
                "finished_prefix": finished_prefix(now),
            },
        )

    def _state(self, conn: sqlite3.Connection, job_id: str) -> JobState:
        row = conn.execute(self._q["job_state.select"], {"id": job_id}).fetchone()
        return _job_state(row)

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
            old = _job_state(row)
            if old.status.finished:
                raise JobFinished(
                    f"job {job_id} is already {old.status.value}; "
                    "only queued or working jobs can be stopped"
                )
            self._save_state(conn, job_id, old, after_stop(old, message), now, retention)
        return None if tenant is None else self._get_job(conn, tenant, job_id, now, 0)

    # -- workers ----------------------------------------------------------------------------

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

    def _purge_job(self, conn: sqlite3.Connection, job_id: str) -> None:
        for name in ("purge_expired.items", "purge_expired.results"):
            while True:
                with self._transaction(conn) if not conn.in_transaction else _nothing():
                    deleted = conn.execute(self._q[name], {"id": job_id}).rowcount
                if deleted == 0:
                    break
        with self._transaction(conn) if not conn.in_transaction else _nothing():
            conn.execute(self._q["purge_expired.job"], {"id": job_id})


class _Refused(Exception):
    """Rolls back a finish whose items are no longer all held by the lease."""


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _as_item(payload: bytes) -> dict[str, Any]:
    item = orjson.loads(payload)
    return item if isinstance(item, dict) else {}


def _split_statements(sql: str) -> list[str]:
    """Split a migration into statements (migrations hold no `--` or `;` inside literals)."""
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [statement.strip() for statement in code.split(";") if statement.strip()]
