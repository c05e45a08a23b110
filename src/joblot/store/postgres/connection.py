"""PostgreSQL plumbing: a pool of autocommit connections, transactions, migrations, and the
job-row steps that every write shares.

Lock order, kept by every write transaction so that no two of them deadlock: a lease's items
(in index order), then the job row, then lease rows. A claim locks the job row last, only to
count the claim, after leasing its items with SKIP LOCKED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from joblot.errors import ConfigError, Unavailable
from joblot.models import JobState
from joblot.store.common import enqueue_params, state_from_row, state_params
from joblot.store.sql import load_migrations, queries

Conn = psycopg.AsyncConnection[TupleRow]
Row = tuple[Any, ...]
SQL = queries("postgres")
log = logging.getLogger("joblot.store")

CONNECT_TIMEOUT = 10  # seconds; libpq would wait minutes for an unreachable host
# The pool retries a failed connection with doubling pauses (1, 2, 4, 8 ... s, up to this
# long); giving up soon makes the next request start afresh at once, so after an outage of
# any length requests are served again within seconds of the database's return.
RECONNECT_SECONDS = 3.0
MIN_CONNECTIONS = 1  # kept open while idle
WAIT_SECONDS = 5.0  # how long a caller waits for a pooled connection before a 503
# A caller who has waited this long for a connection tries a connection of its own: if that
# fails too, the database is down, and every caller is answered at once until it is back.
SUSPECT_SECONDS = 0.4
PROBE_SECONDS = 0.2  # while the database is down, how often a connection is tried
PROBE_TIMEOUT = 1.0  # how long one such try may take (an unreachable host never answers)


async def fetch_one(conn: Conn, name: str, params: dict[str, Any] | None = None) -> Row | None:
    """The first row of the named query."""
    return await (await conn.execute(SQL[name], params)).fetchone()


async def fetch_all(conn: Conn, name: str, params: dict[str, Any] | None = None) -> list[Row]:
    """Every row of the named query."""
    return await (await conn.execute(SQL[name], params)).fetchall()


async def rowcount(conn: Conn, name: str, params: dict[str, Any] | None = None) -> int:
    """Run the named statement; the number of rows it changed."""
    return (await conn.execute(SQL[name], params)).rowcount


async def lock_state(conn: Conn, job_id: str) -> JobState | None:
    """Lock the job row until commit and read its counters; None if the job was purged."""
    row = await fetch_one(conn, "job_state.select", {"id": job_id})
    return None if row is None else state_from_row(row)


async def save_state(
    conn: Conn,
    job_id: str,
    old: JobState,
    new: JobState,
    *,
    now: float,
    retention: float,
    claimed_at: float | None = None,
    turn: float | None = None,
) -> None:
    """Write back what the lifecycle rules decided; bump the version if anyone can see it;
    queue the webhook event of a job that finishes here."""
    params = state_params(
        job_id, old, new, now=now, retention=retention, claimed_at=claimed_at, turn=turn
    )
    await rowcount(conn, "job_state.save", params)
    if params["finished"]:  # the outbox: its webhook event commits with the final status
        await rowcount(conn, "deliveries.enqueue", enqueue_params(job_id, new, now))


def conninfo(url: str) -> str:
    """The connection string of `url`, with a connect timeout unless it names one."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"cannot read the database URL {url!r}: {exc}") from exc
    extra = {} if "connect_timeout" in given else {"connect_timeout": CONNECT_TIMEOUT}
    return make_conninfo(url, **extra)


class Pool:
    """A pool of autocommit connections, opened on first use, that knows when the database is
    down: then every caller gets Unavailable (503) at once instead of after a wait, and a
    probe tries a connection every PROBE_SECONDS, so service resumes as soon as it is back."""

    def __init__(
        self, info: str, *, min_size: int = MIN_CONNECTIONS, max_size: int, timeout: float
    ) -> None:
        self._info = info
        self._sizes = (min_size, max_size)
        self._timeout = timeout
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._opening = asyncio.Lock()
        self._async_commit: bool | None = None  # the server's synchronous_commit is off
        self._down: str | None = None  # while the database is down, what callers are told
        self._checking: asyncio.Task[None] | None = None  # is it down? (after a lost connection)
        self._prober: asyncio.Task[None] | None = None  # is it back? (while it is down)

    async def _open(self) -> AsyncConnectionPool[Conn]:
        async with self._opening:
            if self._pool is None:
                # `check` tests each connection as it is handed out, so after a database
                # restart dead connections are replaced instead of failing a request each.
                pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                    self._info,
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
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled autocommit connection; losing the database raises Unavailable (503)."""
        pool, conn = await self._getconn()
        try:
            async with conn:
                yield conn
        except psycopg.OperationalError as exc:
            if conn.broken:  # the server may have gone: find out, for the callers after this
                self._check_soon()
            raise Unavailable(
                f"the database is unreachable or overloaded ({exc}); retry in a few seconds"
            ) from exc
        finally:
            await pool.putconn(conn)

    async def _getconn(self) -> tuple[AsyncConnectionPool[Conn], Conn]:
        if self._down is not None:
            raise Unavailable(self._down)
        pool = self._pool or await self._open()
        waited = min(SUSPECT_SECONDS, self._timeout)
        try:
            return pool, await pool.getconn(timeout=waited)
        except PoolTimeout:
            if not await self._reachable():
                self._went_down("the database cannot be reached")
                raise Unavailable(self._down or "the database cannot be reached") from None
        except psycopg.OperationalError as exc:  # e.g. closed by another caller who saw it down
            raise Unavailable(f"the database is unreachable ({exc}); retry shortly") from exc
        try:
            return pool, await pool.getconn(timeout=max(0.0, self._timeout - waited))
        except psycopg.OperationalError as exc:  # the pool's PoolTimeout is one too
            raise Unavailable(
                f"the database is unreachable or overloaded ({exc}); retry in a few seconds"
            ) from exc

    async def _reachable(self) -> bool:
        """Whether a new connection to the database can be made now."""
        try:
            connecting = psycopg.AsyncConnection.connect(self._info)
            conn = await asyncio.wait_for(connecting, PROBE_TIMEOUT)
        except (psycopg.Error, OSError, TimeoutError):
            return False
        await conn.close()
        return True

    def _check_soon(self) -> None:
        if self._checking is None and self._down is None:
            self._checking = asyncio.create_task(self._check(), name="joblot-db-check")

    async def _check(self) -> None:
        try:
            if not await self._reachable():
                self._went_down("the database cannot be reached")
        finally:
            self._checking = None

    def _went_down(self, why: str) -> None:
        """Answer every caller at once from now on, and probe until the database is back."""
        if self._down is not None:
            return
        log.warning("%s: answering 503 at once until it is back", why)
        self._down = f"{why}; retry in a few seconds"
        old, self._pool = self._pool, None  # its own reconnection attempts stop with it
        self._prober = asyncio.create_task(self._wait_until_back(old), name="joblot-db-probe")

    async def _wait_until_back(self, old: AsyncConnectionPool[Conn] | None) -> None:
        if old is not None:
            await old.close(timeout=0)
        while True:
            if await self._reachable():
                break
            await asyncio.sleep(PROBE_SECONDS)
        log.warning("the database is reachable again")
        self._down = None  # the next caller opens a fresh pool
        self._prober = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """A pooled connection inside one transaction, committed on success."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def acknowledged(self) -> AsyncIterator[Conn]:
        """A transaction whose success is answered to a client: its commit is on disk when
        it returns, even on a server that runs with `synchronous_commit = off`."""
        async with self.transaction() as conn:
            if await self._commits_async(conn):
                await conn.execute(SQL["acknowledged.synchronous_commit"])
            yield conn

    async def _commits_async(self, conn: Conn) -> bool:
        if self._async_commit is None:
            settings = await durability_settings(conn)
            self._async_commit = settings["synchronous_commit"] == "off"
        return self._async_commit

    async def close(self) -> None:
        """Close every pooled connection."""
        for task in (self._checking, self._prober):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def durability_settings(conn: Conn) -> dict[str, str]:
    """The server's `fsync` and `synchronous_commit`, as this connection sees them."""
    row = await fetch_one(conn, "durability.settings")
    assert row is not None
    return {"fsync": str(row[0]), "synchronous_commit": str(row[1])}


async def migrate(conn: Conn) -> list[int]:
    """Apply missing migrations, one transaction each, under an advisory lock."""
    applied = []
    for migration in load_migrations("postgres"):
        async with conn.transaction():
            await rowcount(conn, "migrations.lock")
            await rowcount(conn, "migrations.create_table")
            done = {v for (v,) in await fetch_all(conn, "migrations.applied")}
            if migration.version in done:
                continue
            await conn.execute(migration.sql)  # several statements: allowed without params
            record = {"version": migration.version, "name": migration.name, "now": time.time()}
            await rowcount(conn, "migrations.record", record)
            applied.append(migration.version)
    return applied


async def schema_version(conn: Conn) -> tuple[int, int]:
    """(applied, latest) migration numbers."""
    latest = len(load_migrations("postgres"))
    exists = await fetch_one(conn, "migrations.exists")
    if exists is None or not exists[0]:
        return 0, latest
    versions = [v for (v,) in await fetch_all(conn, "migrations.applied")]
    return (max(versions) if versions else 0), latest
