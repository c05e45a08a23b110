"""Fixtures of the storage conformance suite: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from joblot.store import Store
from joblot.store.postgres import PostgresStore
from joblot.store.sqlite import SQLiteStore

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


@dataclass(frozen=True)
class Backend:
    """A fresh, empty database of one backend, and a way to open stores on it."""

    name: str
    open: Callable[[], Store]
    url: str  # the database URL (a PostgreSQL one selects the test's schema)

    def count(self, table: str) -> int:
        """How many rows `table` holds, read directly from the database."""
        query = f"SELECT count(*) FROM {table}"  # table names come from the tests only
        if self.name == "sqlite":
            with contextlib.closing(sqlite3.connect(self.url.removeprefix("sqlite:///"))) as db:
                return int(db.execute(query).fetchone()[0])
        with psycopg.connect(self.url) as conn:
            row = conn.execute(query).fetchone()
            return 0 if row is None else int(row[0])


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; skips (fails under CI) when PostgreSQL is not reachable."""
    url = os.environ.get("JOBLOT_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        with psycopg.connect(url, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        reason = (
            f"PostgreSQL is not reachable at {url} ({str(exc).strip()}); start it with "
            f"`{START_POSTGRES}` or point JOBLOT_TEST_POSTGRES_URL at a server"
        )
        if _in_ci():
            pytest.fail(f"CI is set, so the PostgreSQL tests must run: {reason}", pytrace=False)
        pytest.skip(reason)
    return url


def with_search_path(url: str, schema: str) -> str:
    """`url` with `options=-c search_path=<schema>` added, so every connection uses `schema`."""
    parts = urlsplit(url)
    option = "options=" + quote(f"-c search_path={schema}", safe="")
    query = f"{parts.query}&{option}" if parts.query else option
    return urlunsplit(parts._replace(query=query))


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A uniquely named, empty schema for one test, dropped afterwards; yields its URL."""
    schema = f"joblot_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def anyio_backend() -> str:
    """The async tests run on asyncio."""
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh database: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        path = str(tmp_path / "joblot.db")
        yield Backend("sqlite", lambda: SQLiteStore(path), f"sqlite:///{path}")
        return
    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        yield Backend("postgres", lambda: PostgresStore(url), url)


@pytest.fixture
async def open_store(anyio_backend: str, backend: Backend) -> AsyncIterator[Callable[[], Store]]:
    """Opens more stores on the test's database (another node); all are closed afterwards."""
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(backend.open())
        return opened[-1]

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
def fresh_store(open_store: Callable[[], Store]) -> Store:
    """A store on an empty, unmigrated database."""
    return open_store()


@pytest.fixture
async def store(anyio_backend: str, fresh_store: Store) -> Store:
    """A store on a freshly migrated database."""
    await fresh_store.migrate()
    return fresh_store
