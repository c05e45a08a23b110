"""How a worker paces its claims, job type by job type: how many items a claim takes, how long
they are expected to take, and whether to claim the next batch before the running one ends.

Each job type is measured on its own (handler time per item, from its last batch), so a job of
fast items gets big batches even while a job of slow items runs beside it, and the slow job's
small batches do not shrink the fast job's. The store is told each type's pace: a claim takes
that many items, and the job's next turn in the round robin comes only after twice the time
they are expected to take (`joblot.store.claims.next_turn`), so other jobs get at least as much
of the workers' time as a slow job takes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from joblot.store import Pace

TARGET_BATCH_SECONDS = 0.5  # a claim is sized to keep the worker busy about this long
GROWTH = 4  # a type's claims grow at most this much from one batch to the next


class Pacer:
    """The claim size and expected batch time of each job type a worker runs."""

    def __init__(self, job_types: Iterable[str], concurrency: int, batch_size: int) -> None:
        self.concurrency = concurrency
        self.batch_size = batch_size
        # A type not measured yet starts small: it may be slow, and a big claim of slow items
        # would keep them from other workers.
        self.first_size = max(1, min(batch_size, concurrency * 2))
        self._item_seconds: dict[str, float] = {}
        self._paces = {name: Pace(self.first_size) for name in job_types}

    def paces(self) -> dict[str, Pace]:
        """Each job type's pace, for the next claim."""
        return self._paces

    def measured(self, job_type: str, items: int, busy_seconds: float) -> None:
        """A batch of `job_type` ran `items` items in `busy_seconds` of handler time in all:
        size its next claims to take about TARGET_BATCH_SECONDS."""
        pace = self._paces.get(job_type)
        if pace is None or items <= 0:
            return
        per_item = max(busy_seconds / items, 1e-7)
        self._item_seconds[job_type] = per_item
        wanted = int(TARGET_BATCH_SECONDS * self.concurrency / per_item)
        grown = min(wanted, pace.size * GROWTH)
        size = max(self.concurrency, min(self.batch_size, grown))
        self._paces[job_type] = Pace(size, per_item * math.ceil(size / self.concurrency))

    def expected_seconds(self, job_type: str, items: int, slots: int | None = None) -> float | None:
        """How long `items` items of `job_type` should keep the worker busy, run through at
        most `slots` at once (None: all its concurrency); None while the type has not been
        measured."""
        per_item = self._item_seconds.get(job_type)
        if per_item is None:
            return None
        at_once = self.concurrency if slots is None else max(1, min(slots, self.concurrency))
        return per_item * math.ceil(items / at_once)

    def quick(self, job_type: str, items: int, slots: int | None = None) -> bool:
        """Whether a batch of `items` items of `job_type` is expected to end soon (within
        TARGET_BATCH_SECONDS). Only behind such a batch does a worker claim the next one
        before its threads are free: a batch claimed behind slow items would wait for them,
        and so would its job, however fast its own items are."""
        expected = self.expected_seconds(job_type, items, slots)
        return expected is not None and expected <= TARGET_BATCH_SECONDS
