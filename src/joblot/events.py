"""Server-Sent Events: one job's status changes as a stream, until the job finishes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from joblot.errors import JoblotError
from joblot.service import Service
from joblot.store import JobRow

CHANGE_POLL_SECONDS = 0.05  # how often a long poll or stream looks for a change (one read)
KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps proxies from closing the stream
RETRY_MILLIS = 1000  # how soon an EventSource reconnects (with Last-Event-ID) if cut off


def event(row: JobRow, render: Callable[[JobRow], dict[str, Any]]) -> bytes:
    """One `job_status` event, its data the body `render` makes (the JobStatus and its
    `job_stats`); its id is the status version, as in the ETag."""
    data = orjson.dumps(render(row))
    return b"id: %d\nevent: job_status\ndata: %s\n\n" % (row.version, data)


async def status_events(
    service: Service,
    tenant: str,
    job_id: str,
    *,
    last_seen: int | None,
    render: Callable[[JobRow], dict[str, Any]],
    disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[bytes]:
    """The current status (unless `last_seen` is its version), then each change, ending
    after the finished status; a database error ends the stream with an `error` event."""
    yield b"retry: %d\n\n" % RETRY_MILLIS
    sent, quiet_since, first = last_seen, time.monotonic(), True
    while not await disconnected():
        try:
            version = await service.job_version(tenant, job_id)
            if version != sent or first:
                row = await service.get_job(tenant, job_id)
                if row.version != sent:
                    yield event(row, render)
                sent, quiet_since, first = row.version, time.monotonic(), False
                if row.status.finished:
                    return
        except JoblotError as exc:
            body = orjson.dumps({"error": exc.name, "description": exc.description})
            yield b"event: error\ndata: %s\n\n" % body
            return
        if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(CHANGE_POLL_SECONDS)
