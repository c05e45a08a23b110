"""Watch PostgreSQL during a benchmark: cumulative counters, and pg_stat_activity samples.

Used by postgres.py. Sessions are told apart by `application_name`, which the benchmark's URLs
set (harness.postgres_schema).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from harness import BenchError

FAST_SAMPLE_SECONDS = 0.02  # pg_stat_activity sampling while a job runs
SLOW_SAMPLE_SECONDS = 0.5  # ... and between runs, only to notice other sessions
STATEMENT_PREFIX = 60  # characters that tell joblot's statements apart (their comments)


@dataclass(frozen=True)
class Counters:
    """PostgreSQL's cumulative counters: commits of this database, WAL of the whole server."""

    commits: float
    wal_bytes: float
    wal_syncs: float

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.commits - other.commits,
            self.wal_bytes - other.wal_bytes,
            self.wal_syncs - other.wal_syncs,
        )

    def scaled(self, factor: float) -> Counters:
        """Every counter times `factor` (a rate times seconds, or a total divided by them)."""
        return Counters(self.commits * factor, self.wal_bytes * factor, self.wal_syncs * factor)


@dataclass
class Samples:
    """What pg_stat_activity showed of this benchmark's sessions while jobs ran."""

    busy: collections.Counter[str] = field(default_factory=collections.Counter)  # by wait
    statements: collections.Counter[str] = field(default_factory=collections.Counter)
    idle: int = 0
    ticks: int = 0


def statement_names() -> dict[str, str]:
    """joblot's named PostgreSQL queries by the start of their text, to name sampled ones."""
    try:
        from joblot.store.sql import queries  # internal, read only to label samples
    except ImportError:
        return {}
    names: dict[str, str] = {}
    for name, text in queries("postgres").items():
        names.setdefault(" ".join(text.split())[:STATEMENT_PREFIX], name)
    return names


class Monitor:
    """Reads the commit counter and samples pg_stat_activity, each on a connection of its own.

    Both connections stay inside one read-only transaction for their whole life, so the
    monitor adds no commit to the counter it reads; pg_stat_clear_snapshot() makes every
    read fresh. Sessions of the server that are not this benchmark's are "foreign": their
    commits and WAL land in the same counters, so runs that saw any are flagged.
    """

    def __init__(self, base_url: str, application_name: str) -> None:
        self.app = application_name
        name = f"{application_name}-monitor"
        self._counter = psycopg.connect(base_url, application_name=name, connect_timeout=10)
        self._sampler = psycopg.connect(base_url, application_name=name, connect_timeout=10)
        self._own = [self._counter.info.backend_pid, self._sampler.info.backend_pid]
        self.samples = Samples()
        self._names = statement_names()
        self.foreign: list[tuple[float, str]] = []  # (monotonic time, application_name)
        self._fast = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, name="pg-monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop sampling and close both connections (their transactions roll back)."""
        self._stop.set()
        self._thread.join(5)
        self._counter.close()
        self._sampler.close()

    def counters(self) -> Counters:
        """xact_commit of this database, WAL bytes and WAL fsyncs, as published so far."""
        self._counter.execute("SELECT pg_stat_clear_snapshot()")
        row = self._counter.execute(
            "SELECT d.xact_commit, w.wal_bytes, w.wal_sync "
            "FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()"
        ).fetchone()
        if row is None:
            raise BenchError("pg_stat_database has no row for this database")
        return Counters(float(row[0]), float(row[1]), float(row[2]))

    def autoanalyzed(self, schema: str) -> int:
        """How often autovacuum has ANALYZEd the schema's items table."""
        row = self._counter.execute(
            "SELECT autoanalyze_count FROM pg_stat_user_tables "
            "WHERE schemaname = %s AND relname = 'items'",
            (schema,),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def server_seconds(self, schema: str, job_id: str) -> float | None:
        """created_at → finished_at of a job, as the server recorded them."""
        row = self._counter.execute(
            sql.SQL("SELECT finished_at - created_at FROM {}.jobs WHERE id = %s").format(
                sql.Identifier(schema)
            ),
            (job_id,),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @contextlib.contextmanager
    def sampling_fast(self) -> Iterator[None]:
        """Sample every FAST_SAMPLE_SECONDS meanwhile (while a job runs)."""
        self._fast.set()
        try:
            yield
        finally:
            self._fast.clear()

    def foreign_since(self, since: float) -> set[str]:
        """Application names of foreign sessions seen since `since` (monotonic)."""
        return {name or "(no application_name)" for t, name in self.foreign if t >= since}

    def _sample_loop(self) -> None:
        query = (
            "SELECT application_name, state, wait_event_type, wait_event, query "
            "FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> ALL(%s)"
        )
        while not self._stop.is_set():
            fast = self._fast.is_set()
            try:
                self._sampler.execute("SELECT pg_stat_clear_snapshot()")
                rows = self._sampler.execute(query, (self._own,)).fetchall()
            except psycopg.Error:
                return  # the database went away; the run itself will say so
            now = time.monotonic()
            for name, state, wait_type, wait, text in rows:
                if name != self.app:
                    self.foreign.append((now, name))
                elif fast and state != "idle":
                    self._count(state, wait_type, wait, text or "")
                elif fast:
                    self.samples.idle += 1
            self.samples.ticks += fast
            self._stop.wait(FAST_SAMPLE_SECONDS if fast else SLOW_SAMPLE_SECONDS)

    def _count(self, state: str | None, wait_type: str | None, wait: str | None, text: str) -> None:
        if state == "idle in transaction":
            where = "idle in transaction (waiting for the client)"
        elif wait_type is None:
            where = "running (on CPU, no wait event)"
        else:
            where = f"{wait_type}: {wait}"
        self.samples.busy[where] += 1
        start = " ".join(text.split())[:STATEMENT_PREFIX]
        statement = self._names.get(start) or f"`{start[:40]}`"
        self.samples.statements[f"{statement} — {where.split(' (')[0]}"] += 1


@contextlib.contextmanager
def monitoring(base_url: str, application_name: str) -> Iterator[Monitor]:
    """A Monitor, closed on exit."""
    monitor = Monitor(base_url, application_name)
    try:
        yield monitor
    finally:
        monitor.close()
