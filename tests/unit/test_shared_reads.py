"""Batched reads: waiters asking for the same thing at once share a query, and no one gets
the answer of a query that began before they asked."""

from __future__ import annotations

import asyncio

import pytest

from joblot.watcher import Batched, Ticket


async def run_ready() -> None:
    """Let every task that can run take its steps."""
    for _ in range(5):
        await asyncio.sleep(0)


class Reads:
    """A read that takes until the test releases it, recording when each one began."""

    def __init__(self) -> None:
        self.began = 0
        self.release = asyncio.Event()

    async def __call__(self, key: str) -> tuple[str, int]:
        self.began += 1
        number = self.began
        await self.release.wait()
        return key, number


def test_callers_arriving_during_a_read_share_the_next_one_not_the_running_one() -> None:
    async def scenario() -> list[tuple[str, int]]:
        reads = Reads()
        shared = Batched(reads)
        first = asyncio.create_task(shared("job"))
        await run_ready()
        assert reads.began == 1
        later = [asyncio.create_task(shared("job")) for _ in range(100)]
        other = asyncio.create_task(shared("other job"))  # another key reads on its own
        await run_ready()
        assert reads.began == 2, "the 100 wait for the running read to end"
        reads.release.set()
        return await asyncio.gather(first, *later, other)

    answers = asyncio.run(scenario())
    assert answers[0] == ("job", 1)
    assert set(answers[1:-1]) == {("job", 3)}, "one read for all who came meanwhile, begun after"
    assert answers[-1] == ("other job", 2)


def test_an_error_reaches_every_caller_and_a_cancelled_caller_does_not_cancel_the_read() -> None:
    async def failing(key: str) -> int:
        await asyncio.sleep(0.01)
        raise LookupError(key)

    async def scenario() -> None:
        shared: Batched[str, int] = Batched(failing)
        callers = [asyncio.create_task(shared("job")) for _ in range(3)]
        await asyncio.sleep(0)
        callers[1].cancel()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert isinstance(results[0], LookupError) and isinstance(results[2], LookupError)
        assert isinstance(results[1], asyncio.CancelledError)

    asyncio.run(scenario())


def test_a_ticket_wakes_once_per_wake_and_times_out_otherwise() -> None:
    async def scenario() -> tuple[bool, bool, int | None]:
        ticket = Ticket()
        ticket.wake(7)
        woken = await ticket.wait(1.0)
        again = await ticket.wait(0.01)  # the wake-up was used
        return woken, again, ticket.version

    assert asyncio.run(scenario()) == (True, False, 7)


@pytest.mark.parametrize("version", [3, 4])
def test_a_ticket_says_which_versions_are_news(version: int) -> None:
    ticket = Ticket(lambda v: v != 3)
    assert ticket.wanted is not None
    assert ticket.wanted(version) is (version != 3)
