"""One reader per tenant for the tenant-wide event streams an API process holds.

Fifty dashboards open on one tenant are fifty streams of the same changes. Each stream
reading them for itself would cost the database a query per stream per change, so a job
that runs makes the dashboards' cost grow with their number. Instead, while a process holds
any stream of a tenant, one Feed reads that tenant's changes once per change (woken by the
Watcher) and hands the same rows to every stream of the tenant, each rendering them for its
own request.

A stream joins a feed at an instant: from then on it gets every batch the feed reads. What
changed before is its own to read, once: from its Last-Event-ID to now (a resumed stream),
or nothing at all (a new one starts at the feed's position of that instant). Either way the
id of each event it sends is a position up to which it has sent every change, so a client
that reconnects with it misses nothing (it may see a job twice, never miss one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from joblot.errors import JoblotError
from joblot.service import Service
from joblot.store import Changes, JobRow
from joblot.watcher import Watcher

log = logging.getLogger("joblot.api")

RETRY_SECONDS = 1.0  # after a failed read (e.g. the database is away), the feed looks again
MAX_BEHIND = 1000  # batches a stream may fall behind before it is ended (it resumes then)


class FellBehind(Exception):
    """A stream read its feed too slowly; ending it makes its client resume from its last id."""


class Subscription:
    """One stream's place in its tenant's feed: the batches read since it joined."""

    def __init__(self, position: str) -> None:
        self.position = position  # the feed's position when the stream joined
        self._batches: asyncio.Queue[Changes[JobRow]] = asyncio.Queue()
        self.behind = False

    def put(self, batch: Changes[JobRow]) -> None:
        """A batch the feed read (dropped, and the stream marked behind, past MAX_BEHIND)."""
        if self._batches.qsize() >= MAX_BEHIND:
            self.behind = True
            return
        self._batches.put_nowait(batch)

    async def next(self, timeout: float) -> Changes[JobRow] | None:
        """The next batch, or None if none came within `timeout` seconds; FellBehind if the
        stream fell too far behind to catch up."""
        if self.behind:
            raise FellBehind()
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                return await self._batches.get()
        except TimeoutError:
            return None


class Feed:
    """The changes of one tenant's jobs, read once per change for all of its streams."""

    def __init__(self, service: Service, watcher: Watcher, tenant: str) -> None:
        self._service = service
        self._watcher = watcher
        self._tenant = tenant
        self._subscriptions: set[Subscription] = set()
        self._position: str | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reads = 0  # queries made (tests and the benchmark count them)

    async def join(self) -> Subscription:
        """A subscription that gets every batch read from now on."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"joblot-feed-{self._tenant}")
        await self._ready.wait()
        assert self._position is not None
        subscription = Subscription(self._position)  # no await between: nothing slips by
        self._subscriptions.add(subscription)
        return subscription

    def leave(self, subscription: Subscription | None) -> bool:
        """Drop a subscription (None: a join that did not finish); whether the feed has none
        left (and stopped)."""
        if subscription is not None:
            self._subscriptions.discard(subscription)
        if self._subscriptions or self._task is None:
            return not self._subscriptions
        self._task.cancel()
        self._task = None
        self._ready.clear()
        return True

    async def _run(self) -> None:
        with self._watcher.tenant(self._tenant) as ticket:  # woken from now on
            self._position = await self._first_position()
            self._ready.set()
            retry = False  # the last read failed (the database is away): look again soon
            while True:
                woken = await ticket.wait(RETRY_SECONDS if retry else 3600.0)
                if woken or retry:
                    retry = not await self._read()

    async def _first_position(self) -> str:
        while True:
            try:
                return await self._service.store.change_position()
            except JoblotError as exc:
                log.debug("tenant feed: cannot read the change position: %s", exc.description)
            except Exception:  # a feed that died would leave its streams silent
                log.exception("tenant feed: reading the change position failed")
            await asyncio.sleep(RETRY_SECONDS)

    async def _read(self) -> bool:
        """Read what changed since the feed's position and hand it out; False if it failed."""
        assert self._position is not None
        try:
            changes = await self._service.store.tenant_changes(
                self._tenant, self._position, self._service.clock()
            )
        except JoblotError as exc:
            log.debug("tenant feed: cannot read changes: %s", exc.description)
            return False
        except Exception:  # a feed that died would leave its streams silent
            log.exception("tenant feed: reading changes failed")
            return False
        self.reads += 1
        self._position = changes.position
        if changes.rows:
            for subscription in self._subscriptions:
                subscription.put(changes)
        return True


class Feeds:
    """The feeds of the tenants whose streams this process holds."""

    def __init__(self, service: Service, watcher: Watcher) -> None:
        self._service = service
        self._watcher = watcher
        self._feeds: dict[str, Feed] = {}

    def feed(self, tenant: str) -> Feed:
        """The tenant's feed (made on first use)."""
        found = self._feeds.get(tenant)
        if found is None:
            found = self._feeds[tenant] = Feed(self._service, self._watcher, tenant)
        return found

    @contextlib.asynccontextmanager
    async def joined(self, tenant: str) -> AsyncIterator[Subscription]:
        """A subscription to the tenant's feed for the duration of the block."""
        feed = self.feed(tenant)
        subscription = None
        try:
            subscription = await feed.join()
            yield subscription
        finally:
            if feed.leave(subscription) and self._feeds.get(tenant) is feed:
                del self._feeds[tenant]
