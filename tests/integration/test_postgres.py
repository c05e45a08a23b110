"""What only the PostgreSQL backend does: transactional submit, wake-ups, outages, contention."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import orjson
import psycopg
import pytest

from joblot.demo import make_demo_app
from joblot.errors import RecordInvalid, Unavailable, UnknownJobType
from joblot.models import DEFAULT_TENANT, Limit, Status
from joblot.store import Claim, FinishedItem, TypeLimits, open_store
from joblot.store.postgres import PostgresStore
from joblot.store.postgres.connection import SQL
from joblot.transactional import submit_job_in_transaction, submit_job_in_transaction_sync

from .conftest import fresh_schema

pytestmark = pytest.mark.anyio

APP = make_demo_app()


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """The URL of a fresh schema, migrated."""
    with fresh_schema(postgres_url) as url:
        yield url


@pytest.fixture
async def pg_store(anyio_backend: str, pg_url: str) -> AsyncIterator[PostgresStore]:
    """A migrated PostgresStore on a fresh schema."""
    store = PostgresStore(pg_url)
    await store.migrate()
    yield store
    await store.close()


async def test_open_store_picks_postgres_for_both_url_schemes() -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        await store.close()


async def test_job_submitted_in_a_committed_transaction_exists(
    pg_store: PostgresStore, pg_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        row = await submit_job_in_transaction(conn, APP, "demo.echo", [{"id": 1}, {"id": 2}])
        assert (
            await pg_store.get_job(DEFAULT_TENANT, row.id, time.time(), 10) is None
        )  # not yet committed
        await conn.commit()
    stored = await pg_store.get_job(DEFAULT_TENANT, row.id, time.time(), 10)
    assert stored is not None
    assert (stored.status, stored.total) == (Status.QUEUED, 2)
    claimed = await pg_store.claim_items(
        "w", ["demo.echo"], limit=10, now=time.time(), lease_seconds=30.0
    )
    assert claimed is not None
    assert [orjson.loads(i.payload) for i in claimed.items] == [{"id": 1}, {"id": 2}]


class _CallerFailed(Exception):
    """The caller's own work failed after it submitted a job in its transaction."""


async def test_job_submitted_in_a_rolled_back_transaction_never_exists(
    pg_store: PostgresStore, pg_url: str
) -> None:
    async def submit_then_fail(conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            row = await submit_job_in_transaction(conn, APP, "demo.echo", [{"id": 1}])
            raise _CallerFailed(row.id)

    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(_CallerFailed) as failed:
            await submit_then_fail(conn)
    assert await pg_store.get_job(DEFAULT_TENANT, failed.value.args[0], time.time(), 10) is None
    assert (
        await pg_store.claim_items(
            "w", ["demo.echo"], limit=10, now=time.time(), lease_seconds=30.0
        )
        is None
    )


async def test_blocking_connections_submit_in_their_transaction_too(
    pg_store: PostgresStore, pg_url: str
) -> None:
    with psycopg.connect(pg_url) as conn:
        kept = submit_job_in_transaction_sync(conn, APP, "demo.echo", [{"id": 1}], tenant="acme")
        conn.commit()
        dropped = submit_job_in_transaction_sync(conn, APP, "demo.echo", [{"id": 2}])
        conn.rollback()
    assert await pg_store.get_job("acme", kept.id, time.time(), 10) is not None
    assert await pg_store.get_job(DEFAULT_TENANT, dropped.id, time.time(), 10) is None


async def test_transactional_submit_validates_and_needs_a_transaction(
    pg_store: PostgresStore, pg_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(psycopg.ProgrammingError, match="transaction"):
            await submit_job_in_transaction(conn, APP, "demo.echo", [{"id": 1}])
        async with conn.transaction():
            with pytest.raises(UnknownJobType):
                await submit_job_in_transaction(conn, APP, "no.such.type", [{"id": 1}])
    assert (
        await pg_store.claim_items(
            "w", ["demo.echo"], limit=10, now=time.time(), lease_seconds=30.0
        )
        is None
    )


async def test_a_transactional_submit_takes_a_callback_url_checked_as_the_api_checks_it(
    pg_store: PostgresStore, pg_url: str
) -> None:
    hook = "http://127.0.0.1:9/hook"
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        with pytest.raises(RecordInvalid, match="not a public address"):
            await submit_job_in_transaction(
                conn, APP, "demo.echo", [{"id": 1}], callback_url=hook, allow_private=False
            )
        queued = await submit_job_in_transaction(
            conn, APP, "demo.echo", [{"id": 1}], callback_url=hook, allow_private=True
        )
        await conn.commit()
    with psycopg.connect(pg_url) as conn, pytest.raises(RecordInvalid, match="not a public"):
        submit_job_in_transaction_sync(
            conn, APP, "demo.echo", [{"id": 2}], callback_url=hook, allow_private=False
        )
    now = time.time()
    claimed = await pg_store.claim_items("w", ["demo.echo"], limit=10, now=now, lease_seconds=30)
    assert claimed is not None and claimed.job_id == queued.id  # the refused ones left nothing
    await pg_store.finish_items(
        claimed.lease_id,
        [FinishedItem(0, True, b'{"index": 0, "success": true}')],
        message=None,
        final=True,
        now=now,
        retention=60.0,
    )
    (delivery,) = await pg_store.claim_deliveries(limit=10, now=now + 1, lease_seconds=30)
    assert (delivery.job_id, delivery.url, delivery.type) == (queued.id, hook, "job.completed")


async def test_requeued_items_wake_waiting_workers(pg_store: PostgresStore, pg_url: str) -> None:
    other = PostgresStore(pg_url)
    try:
        now = time.time()
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            await submit_job_in_transaction(conn, APP, "demo.echo", [{"id": 1}])
            await conn.commit()
        assert (
            await other.claim_items("w", ["demo.echo"], limit=10, now=now, lease_seconds=1.0)
            is not None
        )
        assert await pg_store.listening(5.0)
        waiting = asyncio.create_task(pg_store.wait_for_work(30.0))
        await asyncio.sleep(0.05)
        assert await other.requeue_expired(now + 2, 3, 60.0) == 1
        await asyncio.wait_for(waiting, 5.0)
    finally:
        await other.close()


async def test_a_claim_that_finds_its_limited_type_busy_tries_again_before_giving_up(
    pg_store: PostgresStore, pg_url: str
) -> None:
    """A claim that finds a limited type's lock taken by another claim takes the type once that
    claim commits, within milliseconds, rather than leave its worker idle until a poll."""
    now = time.time()
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        await submit_job_in_transaction(conn, APP, "demo.echo", [{"id": i} for i in range(4)])
        await conn.commit()
    limits = TypeLimits({"demo.echo": Limit(concurrency=2)}, free=4, capacity=4)

    async def claim_while_locked(seconds: float) -> Claim | None:
        async with await psycopg.AsyncConnection.connect(pg_url) as other:
            # what claim_items.lock_type takes: another claim serving demo.echo
            await other.execute("SELECT pg_advisory_xact_lock(1785684591, hashtext('demo.echo'))")
            claiming = asyncio.create_task(
                pg_store.claim_items(
                    "w", ["demo.echo"], limit=10, now=now, lease_seconds=30, limits=limits
                )
            )
            await asyncio.sleep(seconds)
            await other.commit()
            return await claiming

    assert await claim_while_locked(0.5) is None  # still busy after its last try
    claim = await claim_while_locked(0.01)
    assert claim is not None and claim.slots == 2


async def test_a_claim_walks_a_new_big_jobs_pending_items_in_index_order(pg_url: str) -> None:
    """Before the items table is analyzed, the planner takes a new job for a row or two; a
    claim must still read its next batch off items_pending in order, not sort the whole job."""
    store = PostgresStore(pg_url)
    try:
        await store.migrate()
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            items = [{"id": i} for i in range(100_000)]  # 20,000 are walked in order anyway
            await submit_job_in_transaction(conn, APP, "demo.echo", items)
            await conn.commit()
            (job_id,) = await (await conn.execute("SELECT id FROM jobs")).fetchone() or ("",)
            params = {"job_id": job_id, "lease_id": 1, "limit": 500, "last": 3, "now": 0.0}

            async def plan() -> str:
                query = "EXPLAIN (FORMAT JSON) " + SQL["claim_items.lease_items"]
                found = await (await conn.execute(query, params)).fetchone()
                assert found is not None
                return orjson.dumps(found[0]).decode()

            async with conn.transaction():
                assert '"Sort"' in await plan()  # what the planner does unhelped
            async with conn.transaction():
                await conn.execute(SQL["claim_items.by_index"])
                chosen = await plan()
            assert '"Sort"' not in chosen and "items_pending" in chosen
    finally:
        await store.close()


async def test_an_unreachable_database_answers_unavailable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", timeout=0.5)
    try:
        with pytest.raises(Unavailable, match="retry"):
            await store.get_job("", "x", time.time(), 10)
        with pytest.raises(Unavailable):
            await store.claim_items(
                "w", ["demo.echo"], limit=10, now=time.time(), lease_seconds=30.0
            )
        started = time.monotonic()
        await store.wait_for_work(0.1)  # no listener: degrades to a plain timeout
        assert time.monotonic() - started < 5.0
    finally:
        await store.close()


RACE_LEASE = 0.2  # seconds: short, so that some finishes race the requeue of their lease


async def _work_until_done(store: PostgresStore, job_id: str, name: str) -> int:
    """Claim and finish items with short leases, racing the requeues of other nodes."""
    recorded = 0
    while True:
        await store.requeue_expired(time.time(), 1000, 60.0)
        claim = await store.claim_items(
            name, ["demo.echo"], limit=5, now=time.time(), lease_seconds=RACE_LEASE
        )
        if claim is None:
            row = await store.get_job(DEFAULT_TENANT, job_id, time.time(), 0)
            if row is not None and row.status.finished:
                return recorded
            await store.wait_for_work(0.02)
            continue
        await asyncio.sleep(random.uniform(0, RACE_LEASE * 1.25))  # one in five is too late
        items = [FinishedItem(i.index, True, orjson.dumps({"index": i.index})) for i in claim.items]
        outcome = await store.finish_items(
            claim.lease_id, items, message=None, final=True, now=time.time(), retention=60.0
        )
        recorded += len(items) if outcome.accepted else 0


@pytest.mark.slow
async def test_racing_workers_and_requeues_record_each_item_exactly_once(
    pg_store: PostgresStore, pg_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        row = await submit_job_in_transaction(conn, APP, "demo.echo", [{}] * 300)
        await conn.commit()
    nodes = [PostgresStore(pg_url) for _ in range(3)]
    try:
        workers = [_work_until_done(nodes[n % 3], row.id, f"w{n}") for n in range(8)]
        recorded = await asyncio.wait_for(asyncio.gather(*workers), 60.0)
    finally:
        for node in nodes:
            await node.close()
    final = await pg_store.get_job(DEFAULT_TENANT, row.id, time.time(), 1000)
    assert final is not None and final.results is not None
    assert (final.status, final.progress) == (Status.COMPLETED, 300)
    assert sum(recorded) == 300  # every accepted batch counted, no refused one
    assert [orjson.loads(e)["index"] for e in final.results] == list(range(300))


async def test_acknowledged_writes_commit_synchronously_on_a_server_that_does_not(
    pg_url: str,
) -> None:
    # the URL's options end with the schema's search_path; this session also turns commits async
    off_url = pg_url + quote(" -c synchronous_commit=off", safe="")
    store = PostgresStore(off_url)
    try:
        await store.migrate()
        assert await store.durability_settings() == {"fsync": "on", "synchronous_commit": "off"}
        async with store._pool.acknowledged() as conn:
            assert await (await conn.execute("SHOW synchronous_commit")).fetchone() == ("on",)
        async with store._pool.transaction() as conn:  # what workers' writes use
            assert await (await conn.execute("SHOW synchronous_commit")).fetchone() == ("off",)
    finally:
        await store.close()
