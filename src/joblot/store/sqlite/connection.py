"""SQLite plumbing: connections on threads, transactions, migrations, and the job-row steps
that every write shares."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from joblot.errors import ConfigError, Unavailable
from joblot.models import JobState
from joblot.store import SQLITE_SYNC_MODES
from joblot.store.common import enqueue_params, state_from_row, state_params
from joblot.store.sql import load_migrations, queries

R = TypeVar("R")
Conn = sqlite3.Connection
SQL = queries("sqlite")

READERS = 4  # reader threads per process, each with its own connection
CACHE_KIB = 65536  # page cache of each connection
# The page cache of the connection that exports read through: an export reads a job once, in
# order, and must neither grow the process by a full cache nor push the pages that status
# reads keep using out of the readers' caches.
SCAN_CACHE_KIB = 2048
BUSY_SECONDS = 30.0  # how long a write waits for another process's write lock
LOCK_POLL_SECONDS = 0.001  # how often a waiting write tries for the lock again
_TRANSIENT = re.compile(r"locked|busy|unable to open|disk I/O")


def _use_wal(conn: Conn, seconds: float = BUSY_SECONDS) -> None:
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


def _connect(path: str, sync: str, cache_kib: int = CACHE_KIB) -> Conn:
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_SECONDS, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
    _use_wal(conn)
    # NORMAL: a commit is written to the WAL but not synced, so it survives the process but
    # not a power cut; acknowledged writes are synced on top of it (see Database.write).
    conn.execute(f"PRAGMA synchronous = {'FULL' if sync == 'database' else 'NORMAL'}")
    conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
    return conn


@contextmanager
def transaction(conn: Conn) -> Iterator[None]:
    """A write transaction. IMMEDIATE takes the write lock up front, so two processes never
    deadlock upgrading read locks."""
    _begin_immediate(conn)
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _begin_immediate(conn: Conn) -> None:
    """BEGIN IMMEDIATE, trying for the write lock every millisecond for up to BUSY_SECONDS.

    SQLite's own busy handler sleeps up to 100 ms between tries, so a writer waiting behind
    another that retakes the lock in quick succession (the steps of a big submit, leaving it
    free for a few milliseconds between) would miss every gap; trying this often catches them.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(LOCK_POLL_SECONDS)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")


def in_transaction(conn: Conn) -> AbstractContextManager[None]:
    """A write transaction, unless the connection is in one already (then nothing more)."""
    return contextlib.nullcontext() if conn.in_transaction else transaction(conn)


def split_statements(sql: str) -> list[str]:
    """Split a migration into statements (migrations hold no `--` or `;` inside literals)."""
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [statement.strip() for statement in code.split(";") if statement.strip()]


def lock_state(conn: Conn, job_id: str) -> JobState | None:
    """The job's counters, read inside the caller's write transaction; None once purged.

    Named as PostgreSQL's twin: here the transaction's write lock already covers the row.
    """
    row = conn.execute(SQL["job_state.select"], {"id": job_id}).fetchone()
    return None if row is None else state_from_row(row)


def save_state(
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
    """Write back what the lifecycle rules decided; bump the version (and take the next
    change number) if anyone can see it; queue the webhook event of a job that finishes here."""
    params = state_params(
        job_id, old, new, now=now, retention=retention, claimed_at=claimed_at, turn=turn
    )
    if params["visible"]:
        conn.execute(SQL["changes.next"])  # the number job_state.save stamps the change with
    conn.execute(SQL["job_state.save"], params)
    if params["finished"]:  # the outbox: its webhook event commits with the final status
        conn.execute(SQL["deliveries.enqueue"], enqueue_params(job_id, new, now))


def fetch_all(conn: Conn, name: str, params: dict[str, Any] | None = None) -> list[Any]:
    """Every row of the named query."""
    return conn.execute(SQL[name], params or {}).fetchall()


def fetch_one(conn: Conn, name: str, params: dict[str, Any] | None = None) -> Any:
    """The first row of the named query, or None."""
    return conn.execute(SQL[name], params or {}).fetchone()


def rowcount(conn: Conn, name: str, params: dict[str, Any] | None = None) -> int:
    """Run the named statement; the number of rows it changed."""
    return conn.execute(SQL[name], params or {}).rowcount


class GroupSync:
    """Group commit: one `fdatasync` of the WAL makes every transaction committed before it
    durable, so writers that ask for durability at the same moment share one sync.

    The sync runs on a thread of its own after the commit, outside SQLite's write lock, so
    other writers (in this process or another) go on committing meanwhile; each of their syncs
    then covers all the commits made while the previous one ran. The WAL only grows by
    appending until a checkpoint, and a checkpoint syncs the WAL before copying it into the
    database and syncs the database after (also under `synchronous = NORMAL`), so a commit
    that was in the WAL when the sync began is on disk once it returns.
    """

    def __init__(self, path: str) -> None:
        self._path = os.path.abspath(path)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="joblot-sqlite-sync")
        self._lock = threading.Lock()
        self._asked = 0  # tickets handed out, one per durable write, after its commit
        self._synced = 0  # every ticket up to this one is on disk
        self._running: Future[None] | None = None
        self._folder_synced = False

    async def sync(self) -> None:
        """Return once every transaction committed before this call is on disk."""
        with self._lock:
            self._asked += 1
            ticket = self._asked
        while True:
            with self._lock:
                if self._synced >= ticket:
                    return
                if self._running is None or self._running.done():
                    # a sync already running may have begun before this commit: start anew
                    self._running = self._thread.submit(self._sync_through, self._asked)
                running = self._running
            try:
                await asyncio.wrap_future(running)
            except OSError as exc:
                raise Unavailable(f"could not sync the database to disk: {exc}") from exc

    def _sync_through(self, ticket: int) -> None:
        try:
            _sync_file(self._path + "-wal")
        except FileNotFoundError:  # no WAL (yet, or any more): the database file holds it all
            _sync_file(self._path)
        if not self._folder_synced:  # a new WAL file is durable only once its folder entry is
            _sync_file(os.path.dirname(self._path), folder=True)
            self._folder_synced = True
        with self._lock:
            self._synced = max(self._synced, ticket)

    def close(self) -> None:
        """Stop the sync thread (after the sync it may be running)."""
        self._thread.shutdown(wait=True)


def _sync_file(path: str, *, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if folder:
            os.fsync(fd)
        else:
            os.fdatasync(fd)  # what SQLite itself calls for its files
    finally:
        os.close(fd)


class Database:
    """One writer thread with one connection and reader threads with theirs, so the event
    loop never blocks on the file; each call runs a function of a connection on one of them.

    `sync` says how acknowledged writes reach the disk (see `SQLITE_SYNC_MODES`): `group`
    (the default) syncs the WAL after their commit, one sync shared by concurrent writers;
    `transaction` commits each of them with `synchronous = FULL`; `database` commits every
    write with FULL, workers' writes too.
    """

    def __init__(self, path: str, readers: int = READERS, *, sync: str = "group") -> None:
        if path != ":memory:" and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ConfigError(f"the folder of the database file {path!r} does not exist")
        if sync not in SQLITE_SYNC_MODES:
            raise ConfigError(f"sqlite_sync must be one of {', '.join(SQLITE_SYNC_MODES)}")
        self._path = path
        self._sync = sync
        self._group = GroupSync(path) if sync == "group" and path != ":memory:" else None
        self._local = threading.local()
        self._connections: list[Conn] = []
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="joblot-sqlite-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="joblot-sqlite-reader")
        self._scanner = ThreadPoolExecutor(1, thread_name_prefix="joblot-sqlite-scan")
        self._here: Conn | None = None  # the event loop's own, for `read_here`

    def _conn(self, cache_kib: int = CACHE_KIB) -> Conn:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self._path, self._sync, cache_kib)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def write(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """`fn(conn, *args, **kwargs)` on the writer thread, on disk when this returns.

        Every write whose success is answered to a client (a submit's 202, a cancel, a token
        made or revoked) goes through here, so that the answer survives a power cut.
        """
        if self._sync == "transaction":
            return await self._call(self._writer, _fully_synced, fn, *args, **kwargs)
        result = await self._call(self._writer, fn, *args, **kwargs)
        if self._group is not None:
            await self._group.sync()
        return result

    async def write_redoable(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """`fn(conn, *args, **kwargs)` on the writer thread, not waiting for the disk.

        Only for writes no client is told about and whose loss in a power cut is made good
        by doing them again: workers' claims and results (a lost result leaves its item
        leased under a lease that lapses, so it is run again and recorded once, never
        twice), lease renewals, the chores, and the chunks of a submit not yet answered.
        A later synced write makes them durable too: the WAL is a sequence.
        """
        return await self._call(self._writer, fn, *args, **kwargs)

    async def read(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """`fn(conn, *args, **kwargs)` on a reader thread."""
        return await self._call(self._readers, fn, *args, **kwargs)

    async def read_here(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """`fn(conn, *args, **kwargs)` right here on the event loop, for reads of a few rows
        by key (a status, a version): the hop to a reader thread and back costs several times
        such a query. It never waits for the file: readers of a WAL file do not wait for
        writers, and in the rare moments a reader must (another connection is recovering the
        WAL index), the read goes to a reader thread instead."""
        try:
            return fn(self._here_conn(), *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if not _TRANSIENT.search(str(exc)):
                raise
        return await self.read(fn, *args, **kwargs)

    def _here_conn(self) -> Conn:
        """The event loop's connection: it never waits for a lock (busy timeout 0), and
        sets no journal mode (the file is in WAL mode since the first connection)."""
        if self._here is None:
            conn = sqlite3.connect(
                self._path, isolation_level=None, timeout=0, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            with self._lock:
                self._connections.append(conn)
            self._here = conn
        return self._here

    async def scan(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """`fn(conn, *args, **kwargs)` on the thread of long, one-pass reads (exports), whose
        connection keeps a small page cache."""
        call = functools.partial(self._with_scan_conn, fn, *args, **kwargs)
        return await self._run(self._scanner, call)

    async def _call(
        self, pool: ThreadPoolExecutor, fn: Callable[..., R], *args: Any, **kwargs: Any
    ) -> R:
        return await self._run(pool, functools.partial(self._with_conn, fn, *args, **kwargs))

    async def _run(self, pool: ThreadPoolExecutor, call: Callable[[], R]) -> R:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, call)
        except sqlite3.OperationalError as exc:
            if not _TRANSIENT.search(str(exc)):
                raise
            raise Unavailable(f"the database is busy or unreachable: {exc}") from exc

    def _with_conn(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        return fn(self._conn(), *args, **kwargs)

    def _with_scan_conn(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        return fn(self._conn(SCAN_CACHE_KIB), *args, **kwargs)

    async def close(self) -> None:
        """Close every connection and stop the threads."""
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._scanner.shutdown(wait=True)
        if self._group is not None:
            self._group.close()
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def _fully_synced(conn: Conn, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """`fn` with its commits synced to disk before they return (`synchronous = FULL`)."""
    conn.execute("PRAGMA synchronous = FULL")
    try:
        return fn(conn, *args, **kwargs)
    finally:
        conn.execute("PRAGMA synchronous = NORMAL")


def migrate(conn: Conn) -> list[int]:
    """Apply missing migrations in one write transaction each."""
    conn.execute(SQL["migrations.create_table"])
    applied = []
    for migration in load_migrations("sqlite"):
        with transaction(conn):
            done = {v for (v,) in fetch_all(conn, "migrations.applied")}
            if migration.version in done:
                continue
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            record = {"version": migration.version, "name": migration.name, "now": time.time()}
            conn.execute(SQL["migrations.record"], record)
            applied.append(migration.version)
    return applied


def schema_version(conn: Conn) -> tuple[int, int]:
    """(applied, latest) migration numbers."""
    latest = len(load_migrations("sqlite"))
    exists = fetch_one(conn, "migrations.exists")
    if not exists:
        return 0, latest
    versions = [v for (v,) in fetch_all(conn, "migrations.applied")]
    return (max(versions) if versions else 0), latest
