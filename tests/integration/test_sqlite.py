"""Behaviour particular to the SQLite backend."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from joblot.store.sql import load_migrations
from joblot.store.sqlite import SQLiteStore

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
