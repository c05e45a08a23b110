"""Behaviour particular to the SQLite backend."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest

from joblot.errors import Unavailable
from joblot.store.sql import load_migrations
from joblot.store.sqlite import SQLiteStore, clients
from joblot.store.sqlite.clients import CHUNK_ITEMS, LOAD_SECONDS

from .test_store import INLINE, LEASE, T0, TYPES, new_job

pytestmark = pytest.mark.anyio


async def test_opening_a_new_database_waits_for_another_writer(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "joblot.db")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, before WAL mode was set
    release = threading.Timer(0.3, holder.execute, ["COMMIT"])
    release.start()
    store = SQLiteStore(path)
    try:
        assert await store.schema_version() == (0, len(load_migrations("sqlite")))
    finally:
        release.join()
        holder.close()
        await store.close()


def _count(path: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_a_big_job_is_invisible_to_workers_and_readers_until_all_its_items_are_in(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "joblot.db"
    store = SQLiteStore(str(path))
    try:
        await store.migrate()
        job = new_job(20 * CHUNK_ITEMS)
        task = asyncio.create_task(store.submit_job(job))
        for _ in range(10_000):  # until some steps are in, not all
            if _count(path, "items") > 0:
                break
            await asyncio.sleep(0.001)
        assert _count(path, "loading_jobs") == 1
        assert await store.claim_items("w", TYPES, limit=10, now=T0, lease_seconds=LEASE) is None
        assert await store.get_job("", job.id, T0, INLINE) is None
        page = await store.list_jobs("", now=T0, after=None, before=None, size=10, inline=INLINE)
        assert page.rows == []
        assert not task.done(), "the submit finished before the checks: make the job bigger"
        row, created = await task
        assert created and row.total == _count(path, "items") == 20 * CHUNK_ITEMS
        assert _count(path, "loading_jobs") == 0
        assert await store.claim_items("w", TYPES, limit=10, now=T0, lease_seconds=LEASE)
    finally:
        await store.close()


async def test_what_a_dead_submit_loaded_is_deleted_once_its_time_is_up(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = tmp_path / "joblot.db"
    store = SQLiteStore(str(path))
    try:
        await store.migrate()
        job = new_job(3 * CHUNK_ITEMS)
        # a submit that stored two steps of its items, then its process died
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as dying:
            assert clients.begin_load(dying, job) is None
            clients.load_items(dying, job, 0)
            clients.load_items(dying, job, CHUNK_ITEMS)
        assert _count(path, "items") == 2 * CHUNK_ITEMS
        await store.purge_expired(T0 + LOAD_SECONDS - 1)  # it might still be loading
        assert _count(path, "items") == 2 * CHUNK_ITEMS
        await store.purge_expired(T0 + LOAD_SECONDS)
        assert _count(path, "items") == _count(path, "loading_jobs") == 0
        # had it been alive after all, its next step would store nothing more
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as late:
            with pytest.raises(Unavailable, match="submit the job again"):
                clients.load_items(late, job, 2 * CHUNK_ITEMS)
            with pytest.raises(Unavailable, match="submit the job again"):
                clients.end_load(late, job)
        assert _count(path, "items") == 0
        assert await store.get_job("", job.id, T0, INLINE) is None
    finally:
        await store.close()


async def test_a_status_read_never_holds_the_event_loop_while_the_file_is_locked(
    anyio_backend: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "joblot.db")
    store = SQLiteStore(path)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await store.migrate()
        row, _ = await store.submit_job(new_job(2, tenant="acme"))
        await store.close()  # every connection gone: the next one finds the file as it is
        holder.execute("PRAGMA journal_mode = DELETE")
        holder.execute("BEGIN EXCLUSIVE")  # a writer of a file not in WAL mode: readers wait
        store = SQLiteStore(path)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        threading.Timer(0.3, holder.execute, ["COMMIT"]).start()
        version = await store.job_version("acme", row.id, T0)
        ticker.cancel()
        assert version == row.version
        assert ticks >= 10  # the loop went on while the read waited on a reader thread
    finally:
        holder.close()
        await store.close()
