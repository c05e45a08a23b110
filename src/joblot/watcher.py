"""One watcher per API process: it alone asks the database what changed, for every long poll
and event stream the process holds, and wakes those whose job (or tenant) changed.

While anyone waits, the watcher makes one query per tick, however many wait: "which jobs
changed since my last look?" (an indexed range scan, usually empty). On SQLite a tick is
TICK_SECONDS; on PostgreSQL the watcher sleeps until a NOTIFY says that a transaction on some
node changed a job, and looks on its own only now and then, in case one was lost. Waiting
costs a waiter an asyncio event and a set entry, nothing per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from typing import Generic, TypeVar

from joblot.errors import JoblotError
from joblot.store import JobChange, Store

log = logging.getLogger("joblot.api")

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

TICK_SECONDS = 0.1  # how often the watcher looks while anyone waits (where nothing notifies)


class Ticket:
    """One waiter's registration with the watcher: woken when what it watches changes."""

    def __init__(self, wanted: Callable[[int], bool] | None = None) -> None:
        self._woken = asyncio.Event()
        self.version: int | None = None  # the job's version the last wake-up saw, if known
        # which versions of its job are news to it (None: all); others do not wake it, so a
        # thousand long polls waiting past the `working` version sleep through it
        self.wanted = wanted

    def wake(self, version: int | None = None) -> None:
        """Something it watches changed (to `version`, when the watcher knows it)."""
        self.version = version
        self._woken.set()

    async def wait(self, timeout: float) -> bool:
        """Whether it was woken within `timeout` seconds (since the last wait returned)."""
        try:
            async with asyncio.timeout(max(0.0, timeout)):  # no task of its own, unlike wait_for
                await self._woken.wait()
        except TimeoutError:
            return False
        self._woken.clear()
        return True


class Watcher:
    """Wakes the tickets registered for a job id or a tenant when that job, or any job of that
    tenant, changes; runs only while some ticket is registered."""

    def __init__(self, store: Store, tick_seconds: float = TICK_SECONDS) -> None:
        self._store = store
        self._tick = tick_seconds
        self._jobs: dict[str, set[Ticket]] = {}
        self._tenants: dict[str, set[Ticket]] = {}
        self._task: asyncio.Task[None] | None = None
        self.looks = 0  # queries made for changes (the benchmark reports them)

    @contextlib.contextmanager
    def job(self, job_id: str, wanted: Callable[[int], bool] | None = None) -> Iterator[Ticket]:
        """A ticket woken whenever the job changes (to a version `wanted` says is news), for
        the duration of the block."""
        with self._registered(self._jobs, job_id, Ticket(wanted)) as ticket:
            yield ticket

    @contextlib.contextmanager
    def tenant(self, tenant: str) -> Iterator[Ticket]:
        """A ticket woken whenever any job of the tenant changes or is created."""
        with self._registered(self._tenants, tenant, Ticket()) as ticket:
            yield ticket

    def waiting(self) -> int:
        """How many tickets are registered."""
        return sum(map(len, self._jobs.values())) + sum(map(len, self._tenants.values()))

    async def close(self) -> None:
        """Stop looking (the app is shutting down)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def _registered(
        self, table: dict[str, set[Ticket]], key: str, ticket: Ticket
    ) -> Iterator[Ticket]:
        table.setdefault(key, set()).add(ticket)
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="joblot-watcher")
        try:
            yield ticket
        finally:
            held = table.get(key)
            if held is not None:
                held.discard(ticket)
                if not held:
                    del table[key]

    async def _watch(self) -> None:
        position: str | None = None
        try:
            while self._jobs or self._tenants:
                try:
                    position = await self._look(position)
                except JoblotError as exc:  # e.g. the database is down: waiters time out
                    log.debug("could not look for changes: %s", exc.description)
                    await asyncio.sleep(self._tick)
                except Exception:  # a watcher that died would leave every waiter asleep
                    log.exception("looking for changes of jobs failed")
                    await asyncio.sleep(self._tick)
        finally:
            self._task = None

    async def _look(self, position: str | None) -> str:
        """One tick: the changes since `position`, or, on the first, where to start from."""
        if position is None:
            position = await self._store.change_position()
            # what changed before this position was looked for by nobody: every waiter checks
            self._wake_all()
            return position
        await self._store.wait_for_change(self._tick)
        changes = await self._store.changes_since(position)
        self.looks += 1
        self._wake(changes.rows)
        return changes.position

    def _wake(self, changed: Iterable[JobChange]) -> None:
        for change in changed:
            for ticket in self._jobs.get(change.id, ()):
                if ticket.wanted is None or ticket.wanted(change.version):
                    ticket.wake(change.version)
            for ticket in self._tenants.get(change.tenant, ()):
                ticket.wake()

    def _wake_all(self) -> None:
        for table in (self._jobs, self._tenants):
            for tickets in table.values():
                for ticket in tickets:
                    ticket.wake()


class Batched(Generic[K, T]):
    """A read by key that many waiters make at once (a thousand long polls on one job arriving
    together, or woken together): one query runs per key at a time, and the callers that come
    while it runs share the next one. The next, not the running one: a read always starts
    after its caller arrived, so it sees every change committed before."""

    def __init__(self, read: Callable[[K], Awaitable[T]]) -> None:
        self._read = read
        self._running: dict[K, asyncio.Future[T]] = {}
        self._next: dict[K, asyncio.Future[T]] = {}

    async def __call__(self, key: K) -> T:
        """The value of `key`, read after this call began."""
        if key not in self._running:
            shared = self._start(key)
        elif key in self._next:
            shared = self._next[key]
        else:
            shared = self._next[key] = asyncio.get_running_loop().create_future()
            shared.add_done_callback(_retrieved)
        return await asyncio.shield(shared)

    def _start(self, key: K) -> asyncio.Future[T]:
        running = asyncio.ensure_future(self._read(key))
        self._running[key] = running
        running.add_done_callback(lambda _: self._finished(key))
        running.add_done_callback(_retrieved)
        return running

    def _finished(self, key: K) -> None:
        del self._running[key]
        waiting = self._next.pop(key, None)
        if waiting is not None:
            self._start(key).add_done_callback(lambda done: _copy(done, waiting))


def _copy(done: asyncio.Future[T], to: asyncio.Future[T]) -> None:
    if to.done():
        return
    if done.cancelled():
        to.cancel()
    elif (exc := done.exception()) is not None:
        to.set_exception(exc)
    else:
        to.set_result(done.result())


def _retrieved(done: asyncio.Future[T]) -> None:
    """Marks the outcome seen: when every caller of a shared read was cancelled, its error
    would otherwise be logged as never retrieved."""
    if not done.cancelled():
        done.exception()
