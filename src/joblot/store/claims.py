"""What both backends' claims share: how many items a claim takes, when its job's turn comes
again, what a limited type's limits leave it, and which attempt is an item's last."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joblot.models import Limit, Status, concurrency_text, rate_text
from joblot.store import Pace, TypeLimits

# A lease handed back by a cleanly stopping worker spends no attempt, so no item of it can
# run out of attempts: the requeue of a release uses this as its attempt limit.
NO_ATTEMPT_LIMIT = 1 << 30


def last_attempt(max_attempts: int | None) -> int:
    """The `attempts` of an item on its last attempt, which a claim leases alone (the `last`
    of claim_items.lease_items and .last_attempt); with no limit given, none is."""
    return NO_ATTEMPT_LIMIT if max_attempts is None else max(1, max_attempts - 1)


# -- limits per job type ------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """What a claim would take: a job and how many of its items (None: nothing now), and the
    jobs held back by their type's limit, each with the message that says so."""

    job: tuple[str, str, str] | None = None  # id, job type, tenant
    size: int = 0
    throttle: str | None = None  # the picked job's message, when its limit cut the claim
    held_back: list[tuple[str, str]] = field(default_factory=list)
    rule: Limit | None = None  # the picked job's type's limits
    pace: Pace | None = None  # how the claiming worker takes the picked job's type
    slots: int | None = None  # how many of its items may run at once (Claim.slots)
    busy: bool = False  # PostgreSQL: nothing picked, but a limited type another claim serves


def claim_size(job_type: str, limit: int, paces: Mapping[str, Pace] | None) -> int:
    """How many items a claim of `job_type` takes at most: its pace's size, else `limit`."""
    pace = None if paces is None else paces.get(job_type)
    return limit if pace is None else pace.size


def next_turn(now: float, pace: Pace | None, count: int) -> float:
    """When a job that was just given `count` items comes round again (its `claimed_at`):
    after twice the time they are expected to keep the worker busy, so that other jobs get at
    least as much time as this one takes. At once for a type not measured yet."""
    if pace is None or pace.seconds <= 0 or pace.size <= 0:
        return now
    return now + 2 * pace.seconds * count / pace.size


@dataclass(frozen=True)
class Share:
    """What a limited type's limits leave one claim: `size` items (0: none, the job is held
    back), run through at most `slots` at once (None: the type has no `concurrency`), and the
    message of the job when a limit held back or cut the claim (None: none did)."""

    size: int
    slots: int | None = None
    text: str | None = None


def share(
    limit: Limit, job_type: str, size: int, limits: TypeLimits, *, running: int, started: int
) -> Share:
    """What a claim of a limited type may take, given the `size` its pace asks for, the slots
    of its `concurrency` held under live leases (`running`) and the items of it started in the
    last period of its `rate` (`started`)."""
    rooms: list[tuple[int, str]] = []
    if limit.concurrency is not None:
        rooms.append((limit.concurrency - running, concurrency_text(job_type, limit.concurrency)))
    if limit.rate is not None:
        rooms.append((limit.rate - started, rate_text(job_type, limit)))
    tightest, text = min(rooms)
    if tightest <= 0:
        return Share(0, None, text)
    cut = False
    slots = None
    if limit.concurrency is not None:
        room = limit.concurrency - running
        slots = min(room, limits.free)
        cut = room < limits.free
        # The worker runs `capacity` items at once in a claim's time; through fewer slots, a
        # claim takes proportionally fewer, so that it ends about as soon.
        scaled = -(-size * slots // limits.capacity) if limits.capacity > 0 else slots
        size = min(size, max(slots, scaled))
    if limit.rate is not None:  # each item counts as started when claimed: no more than can start
        room = limit.rate - started
        wanted = min(size, limits.free)
        cut = cut or room < wanted
        size = min(room, wanted)
    return Share(size, slots, text if cut else None)


def own_leases(limits: TypeLimits, job_type: str) -> tuple[list[int], int]:
    """The claiming worker's own live leases of `job_type`, which the database does not count
    (`claim_items.running`), and how many of its slots they hold, which the worker knows."""
    mine = {lease: held for lease, (kind, held) in limits.own.items() if kind == job_type}
    return list(mine), sum(mine.values())


def needs_throttle_message(row: tuple[Any, ...] | None, text: str) -> bool:
    """Whether a held-back job's message (`claim_items.throttled`: status, message,
    message_set) would change to `text`."""
    if row is None:
        return False
    status, message, message_set = row
    return not Status(status).finished and not message_set and message != text
