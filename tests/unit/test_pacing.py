"""Claims paced job type by job type: sizes follow each type's own handler time, and a job's
next turn comes after the time its claim is expected to take, twice over."""

from __future__ import annotations

import time

from joblot.app import Context, JobType
from joblot.batch import Batch
from joblot.models import Limit
from joblot.pacing import TARGET_BATCH_SECONDS, Pacer
from joblot.store import Claim, ClaimedItem, Pace, TypeLimits
from joblot.store.claims import Share, claim_size, next_turn, share


def test_each_job_type_is_sized_by_its_own_handler_time() -> None:
    pacer = Pacer(["fast", "slow"], concurrency=4, batch_size=500)
    assert pacer.paces() == {"fast": Pace(8), "slow": Pace(8)}
    pacer.measured("slow", items=8, busy_seconds=8.0)  # 1 s an item
    for _ in range(5):
        pacer.measured("fast", items=100, busy_seconds=0.001)
    paces = pacer.paces()
    assert paces["slow"] == Pace(4, 1.0)  # never below one item per thread
    assert paces["fast"].size == 500  # grown, by at most 4x a batch, to the most allowed
    assert not pacer.quick("slow", 4)
    assert pacer.quick("fast", 500)
    assert not pacer.quick("unknown", 1)  # not measured: no claim is made behind it


def test_a_batch_run_through_fewer_slots_is_expected_to_take_longer() -> None:
    pacer = Pacer(["t"], concurrency=8, batch_size=500)
    pacer.measured("t", items=8, busy_seconds=8 * 0.1)  # 100 ms an item
    assert pacer.expected_seconds("t", 16) == 0.2
    assert pacer.expected_seconds("t", 16, slots=2) == 0.8
    assert pacer.expected_seconds("t", 16, slots=64) == 0.2  # no more than its threads at once
    assert pacer.quick("t", 16) and not pacer.quick("t", 16, slots=2)


def test_claims_grow_at_most_fourfold_and_aim_at_the_target_time() -> None:
    pacer = Pacer(["t"], concurrency=4, batch_size=10_000)
    pacer.measured("t", items=8, busy_seconds=8 * 1e-5)
    assert pacer.paces()["t"].size == 32
    pacer.measured("t", items=4, busy_seconds=4 * 0.05)  # 50 ms an item
    assert pacer.paces()["t"].size == int(TARGET_BATCH_SECONDS * 4 / 0.05)


def test_a_job_waits_twice_its_expected_time_for_its_next_turn() -> None:
    assert next_turn(100.0, None, 10) == 100.0
    assert next_turn(100.0, Pace(8), 8) == 100.0  # not measured yet
    assert next_turn(100.0, Pace(4, 1.0), 4) == 102.0
    assert next_turn(100.0, Pace(4, 1.0), 2) == 101.0  # a smaller claim than the pace's size


def test_a_claim_takes_its_types_pace_else_the_limit() -> None:
    assert claim_size("a", 10, None) == 10
    assert claim_size("a", 10, {"a": Pace(300)}) == 300
    assert claim_size("b", 10, {"a": Pace(300)}) == 10


def test_a_batch_past_its_time_starts_nothing_more_and_keeps_the_rest_to_hand_back() -> None:
    claim = Claim(1, "job", "t", [ClaimedItem(i, b"{}", 1) for i in range(3)])
    batch = Batch(claim, JobType("t", lambda item, ctx: None), timeout=60.0)
    runner = batch.runner()
    assert batch.start(runner) is not None
    batch.record(runner, {}, Context("job", "t", 0, 1))
    batch.hand_back_at = time.monotonic() - 0.001  # MAX_BATCH_SECONDS have passed
    assert batch.start(runner) is None
    assert batch.leftover == 2  # the worker hands these back with the lease


def _share(
    size: int, free: int, capacity: int, running: int = 0, started: int = 0, **limit: int
) -> Share:
    limits = TypeLimits({"t": Limit(**limit)}, free, capacity)
    return share(limits.by_type["t"], "t", size, limits, running=running, started=started)


def test_a_concurrency_limit_gives_slots_and_the_items_they_run_in_a_claims_time() -> None:
    # The worker runs 32 at once and would take 500: it gets 16 slots, so half the items.
    assert _share(500, free=32, capacity=32, running=48, concurrency=64) == Share(
        250, 16, "Throttled: at most 64 t items run at once"
    )
    assert _share(500, free=32, capacity=32, concurrency=64) == Share(500, 32)
    assert _share(500, free=10, capacity=32, concurrency=64) == Share(157, 10)  # rounded up
    assert _share(20, free=32, capacity=32, concurrency=2) == Share(2, 2, _THROTTLED_2)
    assert _share(500, free=32, capacity=0, concurrency=4) == Share(4, 4, _THROTTLED_4)
    assert _share(500, free=32, capacity=32, running=64, concurrency=64) == Share(
        0, None, "Throttled: at most 64 t items run at once"
    )


def test_a_rate_takes_no_more_items_than_can_start_and_the_tighter_limit_speaks() -> None:
    assert _share(500, free=32, capacity=32, rate=100, per=1) == Share(32, None)
    assert _share(500, free=32, capacity=32, started=95, rate=100, per=1) == Share(
        5, None, "Throttled: at most 100 t items start per second"
    )
    both = _share(500, free=32, capacity=32, concurrency=8, rate=3, per=1)
    assert both == Share(3, 8, "Throttled: at most 3 t items start per second")


_THROTTLED_2 = "Throttled: at most 2 t items run at once"
_THROTTLED_4 = "Throttled: at most 4 t items run at once"
