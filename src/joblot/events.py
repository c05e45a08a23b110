"""Server-Sent Events: one job's status changes until it finishes, and every change of a
tenant's jobs for as long as the client listens. Both wait on the process's Watcher, so an
idle stream costs no query."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from joblot.errors import JoblotError
from joblot.service import Service
from joblot.store import Changes, JobRow
from joblot.watcher import Watcher

RETRY_MILLIS = 1000  # how soon an EventSource reconnects (with Last-Event-ID) if cut off
KEEPALIVE = b": keep-alive\n\n"  # sent when quiet (`keepalive_seconds`), so proxies keep it open

Render = Callable[[JobRow], dict[str, Any]]


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
    service: Service,
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
    with watcher.job(job_id) as ticket:
        known: int | None = None  # the version the watcher last reported, if it did
        while True:
            if known is None or known != sent:
                try:
                    row = await service.get_job(tenant, job_id)
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
    service: Service,
    watcher: Watcher,
    tenant: str,
    *,
    position: str | None,
    render: Render,
    keepalive: float,
) -> AsyncIterator[bytes]:
    """Each change of any of the tenant's jobs (new ones included) as it comes, from
    `position` on (a Last-Event-ID) or from now; never ends on its own. Each job comes in its
    latest state: several changes of one job between two looks are one event. The id of the
    last event of each look is the position after it (`id:` alone when nothing changed yet),
    so a client that reconnects with it misses nothing; one cut off in the middle of a look
    gets that look again."""
    yield b"retry: %d\n\n" % RETRY_MILLIS
    with watcher.tenant(tenant) as ticket:
        if position is None:
            try:
                position = await service.store.change_position()
            except JoblotError as exc:
                yield error_event(exc)
                return
            yield b"id: %s\n\n" % position.encode()
        quiet_since, look = time.monotonic(), True
        changes: Changes[JobRow] | None = None
        while True:
            if look:
                try:
                    changes = await service.store.tenant_changes(tenant, position, service.clock())
                except JoblotError:  # the database is away: look again soon, stay open
                    changes = None
                else:
                    for n, row in enumerate(changes.rows, start=1):
                        last = n == len(changes.rows)
                        yield event(row, render, changes.position.encode() if last else None)
                        quiet_since = time.monotonic()
                    position = changes.position
            quiet = time.monotonic() - quiet_since
            timeout = RETRY_MILLIS / 1000 if changes is None else keepalive - quiet
            look = await ticket.wait(timeout) or changes is None
            if time.monotonic() - quiet_since >= keepalive:
                yield KEEPALIVE
                quiet_since = time.monotonic()
