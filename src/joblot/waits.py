"""The event streams and long polls an API process holds open: at most so many per token, and
every one of a token ended within CHECK_SECONDS of the token's revocation.

Each API process checks for itself, so revocation holds on every node: while it holds any
wait, it asks the database once every CHECK_SECONDS which of their tokens are still live (one
query, however many waits), and ends the waits of the others. Waits held without a token (a
server serving open) end once the server stops being open (its first token was created).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from joblot.auth import Authenticator, Caller
from joblot.errors import JoblotError, TooManyRequests

log = logging.getLogger("joblot.api")

T = TypeVar("T")
CHECK_SECONDS = 1.0  # how often the tokens of open waits are checked (revocation holds within 2 s)


class Ended(Exception):
    """The wait was ended: its token was revoked, or the server closed to callers without one."""


class ShuttingDown(Ended):
    """The wait was ended because this server is stopping: the caller did nothing wrong and
    should come back (a stream resumes with Last-Event-ID, a long poll is answered as is)."""


class Wait:
    """One open stream or long poll, for one caller; `ended` is set when it must stop."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.ended = asyncio.Event()
        self.shutting_down = False  # ended by the server's shutdown, not by revocation

    async def race(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`'s result, unless the wait ends first: then Ended (and it is cancelled)."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
        if not work.done() or work.cancelled():
            raise ShuttingDown() if self.shutting_down else Ended()
        return work.result()


class Waits:
    """The waits this process holds, by token; TooManyRequests past `per_token` for one."""

    def __init__(self, auth: Authenticator, per_token: int) -> None:
        self.auth = auth
        self.per_token = per_token
        self._held: dict[str | None, set[Wait]] = {}
        self._checker: asyncio.Task[None] | None = None

    def open(self, caller: Caller) -> Wait:
        """Hold a new wait for `caller` (release it with `close`)."""
        held = self._held.setdefault(caller.token_id, set())
        if len(held) >= self.per_token:
            raise TooManyRequests(
                f"this token holds {len(held)} event streams and long polls on this server, "
                f"the most it may; close one first",
                retry_after=5,
            )
        wait = Wait(caller)
        held.add(wait)
        if self._checker is None:
            self._checker = asyncio.create_task(self._check_while_held(), name="joblot-waits")
        return wait

    def close(self, wait: Wait) -> None:
        """Release a wait (again is harmless)."""
        held = self._held.get(wait.caller.token_id)
        if held is not None:
            held.discard(wait)
            if not held:
                del self._held[wait.caller.token_id]

    @contextlib.asynccontextmanager
    async def holding(self, caller: Caller) -> AsyncIterator[Wait]:
        """A wait held for the duration of the block."""
        wait = self.open(caller)
        try:
            yield wait
        finally:
            self.close(wait)

    def shut(self) -> None:
        """End every wait held now, for the server is stopping: streams end without an error
        event (clients resume elsewhere or after the restart) and long polls answer what they
        have, so their connections close instead of holding the shutdown up."""
        for held in self._held.values():
            for wait in held:
                wait.shutting_down = True
                wait.ended.set()

    def count(self) -> int:
        """How many waits are held."""
        return sum(len(held) for held in self._held.values())

    async def _check_while_held(self) -> None:
        try:
            while self._held:
                await asyncio.sleep(CHECK_SECONDS)
                try:
                    await self.check()
                except JoblotError as exc:  # e.g. the database is down: try again next time
                    log.debug("could not check the tokens of open streams: %s", exc.description)
                except Exception:  # a checker that died would let revoked streams run on
                    log.exception("checking the tokens of open streams failed")
        finally:
            self._checker = None

    async def check(self) -> None:
        """End the waits whose token is no longer live (or whose server no longer serves open)."""
        token_ids = [key for key in self._held if key is not None]
        live = await self.auth.tokens.live_tokens(token_ids) if token_ids else set()
        revoked = set(token_ids) - live
        if revoked:
            self.auth.forget(revoked)
        ending: set[str | None] = set(revoked)
        if None in self._held and not await self.auth.serving_open(fresh=True):
            ending.add(None)
        for key in ending:
            for wait in self._held.get(key, ()):
                wait.ended.set()


async def guarded(wait: Wait, events: AsyncIterator[bytes], ending: bytes) -> AsyncIterator[bytes]:
    """`events` until they end or `wait` does; then `ending` is the last chunk sent (unless the
    server is stopping: then the stream just ends)."""
    chunks = aiter(events)
    try:
        while True:
            try:
                chunk = await wait.race(anext(chunks))
            except (StopAsyncIteration, ShuttingDown):
                return
            except Ended:
                yield ending
                return
            yield chunk
    finally:
        close: Callable[[], Awaitable[None]] | None = getattr(chunks, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
