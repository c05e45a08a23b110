"""Server-Sent Events: one job's status changes until it finishes, and every change of a
tenant's jobs for as long as the client listens. Both wait on the process's Watcher, so an
idle stream costs no query."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson

from joblot.bodies import status_body
from joblot.errors import JoblotError
from joblot.feeds import Feeds, FellBehind
from joblot.service import Service
from joblot.store import Changes, JobRow
from joblot.watcher import Batched, Watcher

RETRY_MILLIS = 1000  # how soon an EventSource reconnects (with Last-Event-ID) if cut off
KEEPALIVE = b": keep-alive\n\n"  # sent when quiet (`keepalive_seconds`), so proxies keep it open

Render = Callable[[JobRow], dict[str, Any]]


class SharedReads:
    """The reads of waiters, shared by those that make the same one at the same moment (see
    Batched): a thousand streams opened together, or woken by one change, cost a few queries,
    and each read still starts after its caller asked."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._versions: Batched[tuple[str, str], int] = Batched(
            lambda key: service.job_version(*key)
        )
        self._jobs: Batched[tuple[str, str], JobRow] = Batched(lambda key: service.get_job(*key))
        self._bodies: Batched[tuple[str, str, str], tuple[int, bytes]] = Batched(self._render)
        self._changes: Batched[tuple[str, str], Changes[JobRow]] = Batched(
            lambda key: service.store.tenant_changes(*key, service.clock())
        )

    async def version(self, tenant: str, job_id: str) -> int:
        """The job's version (RecordNotFound if the tenant has no such job)."""
        return await self._versions((tenant, job_id))

    async def job(self, tenant: str, job_id: str) -> JobRow:
        """The job (RecordNotFound if the tenant has no such job)."""
        return await self._jobs((tenant, job_id))

    async def body(self, tenant: str, job_id: str, base: str) -> tuple[int, bytes]:
        """The job's version and its status body as JSON, with urls under `base`: long polls
        woken together by one change render it once."""
        return await self._bodies((tenant, job_id, base))

    async def _render(self, key: tuple[str, str, str]) -> tuple[int, bytes]:
        tenant, job_id, base = key
        row = await self.service.get_job(tenant, job_id)
        return row.version, orjson.dumps(status_body(row, base))

    async def tenant_changes(self, tenant: str, position: str) -> Changes[JobRow]:
        """The tenant's jobs changed since `position`, and the position after them."""
        return await self._changes((tenant, position))


def event(row: JobRow, render: Render, event_id: bytes | None) -> bytes:
    """One `job_status` event, its data the body `render` makes (the JobStatus and its
    `job_stats`), with `event_id` if given."""
    data = orjson.dumps(render(row))
    head = b"id: %s\n" % event_id if event_id is not None else b""
    return head + b"event: job_status\ndata: %s\n\n" % data


def error_event(exc: JoblotError) -> bytes:
    """The last event of a stream that cannot go on (e.g. the database is unreachable)."""
    body = orjson.dumps({"error": exc.name, "description": exc.description})
    return b"event: error\ndata: %s\n\n" % body


async def status_events(
    reads: SharedReads,
    watcher: Watcher,
    tenant: str,
    job_id: str,
    *,
    last_seen: int | None,
    render: Render,
    keepalive: float,
) -> AsyncIterator[bytes]:
    """The current status (unless `last_seen` is its version), then each change, ending
    after the finished status; the event id is the status version, as in the ETag. A database
    error ends the stream with an `error` event."""
    yield b"retry: %d\n\n" % RETRY_MILLIS
    sent = last_seen
    with watcher.job(job_id, lambda version: version != sent) as ticket:
        known: int | None = None  # the version the watcher last reported, if it did
        while True:
            if known is None or known != sent:
                try:
                    row = await reads.job(tenant, job_id)
                except JoblotError as exc:
                    yield error_event(exc)
                    return
                if row.version != sent:
                    yield event(row, render, b"%d" % row.version)
                    sent = row.version
                if row.status.finished:
                    return
            if not await ticket.wait(keepalive):
                yield KEEPALIVE
                continue
            known = ticket.version


async def tenant_events(
    reads: SharedReads,
    feeds: Feeds,
    tenant: str,
    *,
    position: str | None,
    render: Render,
    keepalive: float,
) -> AsyncIterator[bytes]:
    """Each change of any of the tenant's jobs (new ones included) as it comes, from
    `position` on (a Last-Event-ID) or from now; never ends on its own. Each job comes in its
    latest state: several changes of one job between two looks are one event. The id of the
    last event of each look is a position up to which every change was sent (`id:` alone
    at the start), so a client that reconnects with it misses nothing; one cut off in the
    middle of a look gets that look again. The changes come from the tenant's Feed, read
    once for every stream of the tenant in this process."""
    yield b"retry: %d\n\n" % RETRY_MILLIS
    async with feeds.joined(tenant) as subscription:
        if position is None:
            yield b"id: %s\n\n" % subscription.position.encode()
        else:  # what changed while the client was away: this stream's own read, once
            try:
                missed = await reads.tenant_changes(tenant, position)
            except JoblotError as exc:
                yield error_event(exc)
                return
            for chunk in _events(missed, render):
                yield chunk
        while True:
            try:
                batch = await subscription.next(keepalive)
            except FellBehind:
                return  # the client resumes from the last id it got
            if batch is None:
                yield KEEPALIVE
                continue
            for chunk in _events(batch, render):
                yield chunk


def _events(changes: Changes[JobRow], render: Render) -> Iterator[bytes]:
    """One event per row, the last with the position after them as its id."""
    for n, row in enumerate(changes.rows, start=1):
        last = n == len(changes.rows)
        yield event(row, render, changes.position.encode() if last else None)
