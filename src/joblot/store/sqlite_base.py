"""SQLite plumbing: connections on threads, transactions, migrations and the job-row rules."""

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

from joblot.errors import ConfigError, Unavailable
from joblot.models import JobState, Status
from joblot.store import JobRow, job_state, state_params
from joblot.store.sql import load_migrations, load_queries

R = TypeVar("R")
_TRANSIENT = re.compile(r"locked|busy|unable to open|disk I/O")


def job_row(row: tuple[Any, ...], results: list[bytes] | None) -> JobRow:
    """A JobRow from the columns of `get_job.select`."""
    id_, job_type, status, total, progress, message, version, list_key = row
    return JobRow(
        id_, job_type, Status(status), total, progress, message, version, results, list_key
    )


def _use_wal(conn: sqlite3.Connection, seconds: float = 30.0) -> None:
    """Put the file in WAL mode, so readers run beside the one writer.

    Switching a new file to WAL needs a moment with no other writer, and SQLite does not
    wait for it (the busy timeout does not apply), so wait here, as the timeout would.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def nothing() -> Iterator[None]:
    """A context that does nothing (a transaction already open)."""
    yield


def split_statements(sql: str) -> list[str]:
    """Split a migration into statements (migrations hold no `--` or `;` inside literals)."""
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [statement.strip() for statement in code.split(";") if statement.strip()]


class SQLiteBase:
    """One writer thread with one connection, reader threads with theirs, and what every
    operation shares: transactions, the schema, reading and saving a job's state."""

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

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path, isolation_level=None, timeout=30.0, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout = 30000")
            _use_wal(conn)
            # NORMAL sync is durable across process crashes, which is what leases guard against
            conn.execute("PRAGMA synchronous = NORMAL")
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
                for statement in split_statements(migration.sql):
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

    def _execute_in_transaction(
        self, conn: sqlite3.Connection, name: str, args: dict[str, Any]
    ) -> int:
        with self._transaction(conn):
            return conn.execute(self._q[name], args).rowcount

    def _fetch(self, conn: sqlite3.Connection, name: str, args: dict[str, Any]) -> list[Any]:
        return conn.execute(self._q[name], args).fetchall()

    def _get_job(
        self, conn: sqlite3.Connection, tenant: str, job_id: str, now: float, inline: int
    ) -> JobRow | None:
        row = conn.execute(
            self._q["get_job.select"], {"id": job_id, "tenant": tenant, "now": now}
        ).fetchone()
        if row is None:
            return None
        return job_row(row, self._inline_results(conn, row, inline))

    def _inline_results(
        self, conn: sqlite3.Connection, row: tuple[Any, ...], inline: int
    ) -> list[bytes] | None:
        job_id, total, status = row[0], row[3], row[2]
        if total > inline or status == Status.QUEUED:
            return None
        return [e for (e,) in conn.execute(self._q["get_job.inline_results"], {"id": job_id})]

    def _job_version(
        self, conn: sqlite3.Connection, tenant: str, job_id: str, now: float
    ) -> int | None:
        row = conn.execute(
            self._q["job_version"], {"id": job_id, "tenant": tenant, "now": now}
        ).fetchone()
        return None if row is None else int(row[0])

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
        params = state_params(job_id, old, new, now, retention, claimed_at)
        conn.execute(self._q["job_state.save"], params)

    def _state(self, conn: sqlite3.Connection, job_id: str) -> JobState | None:
        row = conn.execute(self._q["job_state.select"], {"id": job_id}).fetchone()
        return None if row is None else job_state(row)

    def _purge_job(self, conn: sqlite3.Connection, job_id: str) -> None:
        for name in ("purge_expired.items", "purge_expired.results"):
            while True:
                with self._transaction(conn) if not conn.in_transaction else nothing():
                    deleted = conn.execute(self._q[name], {"id": job_id}).rowcount
                if deleted == 0:
                    break
        with self._transaction(conn) if not conn.in_transaction else nothing():
            conn.execute(self._q["purge_expired.leases"], {"id": job_id})
            conn.execute(self._q["purge_expired.job"], {"id": job_id})
