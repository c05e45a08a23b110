"""Change positions, on both backends: what the watcher of an API process and the tenant event
stream read. Nothing committed after a position is ever missed by a reader starting from it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import pytest

from joblot.demo import make_demo_app
from joblot.models import DEFAULT_TENANT
from joblot.store import Store
from joblot.store.postgres import PostgresStore
from joblot.transactional import submit_job_in_transaction

from .conftest import Backend
from .test_store import RETENTION, T0, claim, finish, submit

pytestmark = pytest.mark.anyio

APP = make_demo_app()


async def test_submits_and_visible_changes_come_after_the_position_taken_before_them(
    store: Store,
) -> None:
    before = await store.change_position()
    assert (await store.changes_since(before)).rows == []
    row = await submit(store, 2)
    first = await store.changes_since(before)
    assert [(c.id, c.tenant, c.version) for c in first.rows] == [(row.id, "", row.version)]
    assert (await store.changes_since(first.position)).rows == [], "seen once"
    await finish(store, await claim(store, T0 + 1), T0 + 2)
    second = await store.changes_since(first.position)
    assert [(c.id, c.version) for c in second.rows] == [(row.id, row.version + 2)]
    assert (await store.changes_since(second.position)).rows == []


async def test_invisible_writes_are_no_change(store: Store) -> None:
    row = await submit(store, 2)
    claimed = await claim(store, T0 + 1)
    position = await store.change_position()
    await store.renew_leases([claimed.lease_id], T0 + 2, T0 + 60)  # nobody can see a renewal
    assert (await store.changes_since(position)).rows == []
    await finish(store, claimed, T0 + 3)
    assert [c.id for c in (await store.changes_since(position)).rows] == [row.id]


async def test_tenant_changes_are_the_tenants_only_in_their_latest_state_without_results(
    store: Store,
) -> None:
    position = await store.change_position()
    mine = await submit(store, 1, tenant="acme")
    await submit(store, 1, tenant="other")
    await finish(store, await claim(store, T0 + 1), T0 + 2)  # the oldest job: acme's
    changes = await store.tenant_changes("acme", position, T0 + 3)
    assert [(r.id, r.status.value, r.progress) for r in changes.rows] == [(mine.id, "completed", 1)]
    assert changes.rows[0].results is None, "the tenant stream never carries results"
    assert (await store.tenant_changes("acme", changes.position, T0 + 3)).rows == []
    assert (await store.tenant_changes("nobody", position, T0 + 3)).rows == []


async def test_a_resumed_reader_gets_what_changed_while_it_was_away(store: Store) -> None:
    first = await submit(store, 1, tenant="acme")
    seen = await store.tenant_changes("acme", await store.change_position(), T0)
    second = await submit(store, 1, tenant="acme", at=T0 + 1)
    await store.stop_job("acme", first.id, message="stop", now=T0 + 2, retention=RETENTION)
    resumed = await store.tenant_changes("acme", seen.position, T0 + 3)
    assert sorted(r.id for r in resumed.rows) == sorted([first.id, second.id])


async def test_positions_a_store_makes_are_valid_and_garbage_is_not(store: Store) -> None:
    position = await store.change_position()
    assert store.valid_position(position)
    assert store.valid_position((await store.changes_since(position)).position)
    for bad in ["", "abc", "-1", "1" * 40, "١٢", "5:3:", "3:5:6", "3:9:7,5", "0:0:", "1:2:3:4"]:
        assert not store.valid_position(bad), bad


async def test_a_change_committed_after_a_later_one_was_read_is_not_missed(
    backend: Backend, store: Store
) -> None:
    """The case a counter handed out inside parallel transactions gets wrong: a transaction
    that began first commits last, after a reader already saw the other one."""
    if backend.name == "sqlite":
        pytest.skip("differs by necessity: SQLite's single writer commits in order")
    position = await store.change_position()
    async with await psycopg.AsyncConnection.connect(backend.url) as conn:
        slow = await submit_job_in_transaction(conn, APP, "demo.echo", [{}])
        fast = await submit(store, 1)  # begins after, commits first
        early = await store.changes_since(position)
        assert [c.id for c in early.rows] == [fast.id]
        await conn.commit()
    late = await store.changes_since(early.position)
    assert [c.id for c in late.rows] == [slow.id]
    replayed = await store.tenant_changes(DEFAULT_TENANT, early.position, T0)
    assert [r.id for r in replayed.rows] == [slow.id]


async def test_a_notification_that_came_while_nobody_waited_ends_the_next_wait(
    backend: Backend, store: Store, open_store: Callable[[], Store]
) -> None:
    """An idle worker (or the watcher) that was busy when work was announced does not sleep
    through it: on PostgreSQL it now looks on its own only once a second."""
    if backend.name == "sqlite":
        pytest.skip("differs by necessity: SQLite has no notifications, waiting is a sleep")
    assert isinstance(store, PostgresStore)
    assert await store.listening(5.0)
    await store.wait_for_work(0.01)  # whatever was announced before is seen
    await store.wait_for_change(0.01)
    await submit(open_store(), 1)  # another node announces work while nobody here waits
    await asyncio.sleep(0.2)
    await asyncio.wait_for(store.wait_for_work(60.0), 10.0)
    await asyncio.wait_for(store.wait_for_change(60.0), 10.0)
