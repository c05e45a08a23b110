"""Cluster-wide chores run by one process at a time, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from joblot.config import Settings
from joblot.demo import make_demo_app
from joblot.maintenance import Maintenance
from joblot.service import Service
from joblot.store import Store

pytestmark = pytest.mark.anyio

LEASE = 2.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _service(store: Store, clock: Clock) -> Service:
    settings = Settings(lease_seconds=LEASE, retention_seconds=10.0)
    return Service(store, make_demo_app(), settings, clock=clock)


async def test_only_the_leader_requeues_and_a_survivor_takes_over_when_it_dies(
    store: Store, open_store: Callable[[], Store]
) -> None:
    clock = Clock()
    api, worker = _service(store, clock), _service(open_store(), clock)
    first, second = Maintenance(api, holder="api"), Maintenance(worker, holder="worker")

    async def rounds(count: int, *alive: Maintenance) -> None:
        for _ in range(count):  # as their loops would: a round every half lease
            clock.now += LEASE / 2
            for maintenance in alive:
                await maintenance.round()

    await api.submit_job("default", {"job": {"job_type": "demo.echo", "items": [{}, {}]}})
    assert await worker.claim_items("dead-worker", ["demo.echo"], 10) is not None
    await rounds(3, first, second)  # the claim's lease lapses meanwhile
    assert (first.leading, second.leading) == (True, False)
    assert await worker.claim_items("w2", ["demo.echo"], 10) is not None, "requeued"

    await rounds(2, second)  # `first` died: its lead has not lapsed yet
    assert not second.leading
    await rounds(1, second)
    assert second.leading, "the lead lapsed with the leases of the process that held it"
    assert await worker.claim_items("w3", ["demo.echo"], 10) is not None, "requeued again"


async def test_the_leader_purges_jobs_past_their_retention(store: Store) -> None:
    clock = Clock()
    service = _service(store, clock)
    row, _ = await service.submit_job("default", {"job": {"job_type": "demo.echo", "items": [{}]}})
    await service.cancel_job("default", row.id)
    clock.now += 11  # past the retention of 10 s
    await Maintenance(service).round()
    assert await store.get_job("default", row.id, clock.now - 11, 0) is None
