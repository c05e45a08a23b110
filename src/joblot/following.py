"""Following jobs over HTTP: long polls (`Prefer: wait=N`) and the two event streams. They all
wait on the process's one Watcher, count against their caller's cap of open waits, and end
within 2 s of their token's revocation or at once when the server stops."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from joblot.auth import Authenticator
from joblot.bodies import etag, status_body
from joblot.errors import Unauthorized
from joblot.events import SharedReads, status_events, tenant_events
from joblot.feeds import Feeds
from joblot.params import base_url, caller_of, job_id_param, tags, tenant_of
from joblot.service import Service
from joblot.store import JobRow
from joblot.waits import Ended, ShuttingDown, Wait, Waits, guarded
from joblot.watcher import Watcher

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
REVOKED_EVENT = b"event: error\ndata: %s\n\n" % orjson.dumps(
    {"error": Unauthorized.name, "description": "the token of this stream was revoked"}
)


class HeldStream(StreamingResponse):
    """A streaming response that holds a wait of its caller until it is over, however it ends
    (even if it never started because the client had gone)."""

    def __init__(self, body: AsyncIterator[bytes], waits: Waits, wait: Wait, **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self._waits, self._wait = waits, wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._waits.close(self._wait)


class Following:
    """The long polls and event streams of one API process, and what they share."""

    def __init__(self, service: Service, auth: Authenticator) -> None:
        self.service = service
        self.waits = Waits(auth, service.settings.max_streams_per_token)
        self.watcher = Watcher(service.store)  # shared by every long poll and event stream
        self.reads = SharedReads(service)  # what waiters read, shared when made at once
        self.feeds = Feeds(service, self.watcher)  # one reader per tenant for its streams

    async def close(self) -> None:
        """Stop watching (the app is shutting down)."""
        await self.watcher.close()

    def stream(self, request: Request, events: AsyncIterator[bytes]) -> Response:
        """A Server-Sent Events response of `events` for the request's caller. Every stream
        goes through here: it counts against the caller's cap of open streams and long polls,
        and ends (with an `error` event) within 2 s of its token's revocation."""
        wait = self.waits.open(caller_of(request))
        body = guarded(wait, events, REVOKED_EVENT)
        return HeldStream(
            body, self.waits, wait, media_type="text/event-stream", headers=STREAM_HEADERS
        )

    def renderer(self, request: Request) -> Callable[[JobRow], dict[str, Any]]:
        """How a stream of this request renders a job: its status body, urls under the
        request's base URL."""
        base = base_url(request, self.service)
        return lambda row: status_body(row, base)

    async def long_poll(
        self, request: Request, tenant: str, job_id: str, given: str, wait: float
    ) -> int:
        """The job's version now; if it is one of the ETags `given`, once it changes or `wait`
        seconds pass. Long polls of one job that arrive (or wake) together share their reads."""
        version = await self.reads.version(tenant, job_id)
        if etag(job_id, version) not in tags(given):
            return version
        async with self.waits.holding(caller_of(request)) as held:
            try:
                return await held.race(self._wait_for_change(tenant, job_id, given, wait))
            except ShuttingDown:  # answered as at the deadline: the client polls again
                return await self.reads.version(tenant, job_id)
            except Ended:
                raise Unauthorized("the token of this request was revoked") from None

    async def _wait_for_change(self, tenant: str, job_id: str, given: str, wait: float) -> int:
        """Hold a long poll until the version differs from the ETags given or `wait` passes;
        the watcher wakes it, so an unchanged job costs no query while it waits."""
        deadline = time.monotonic() + wait
        known = tags(given)
        with self.watcher.job(job_id, lambda v: etag(job_id, v) not in known) as ticket:
            version = await self.reads.version(tenant, job_id)  # again, now that it is watched
            while etag(job_id, version) in known:
                if not await ticket.wait(deadline - time.monotonic()):
                    return await self.reads.version(tenant, job_id)
                reported = ticket.version  # None: woken without news, so read it
                version = await self.reads.version(tenant, job_id) if reported is None else reported
            return version

    async def job_events(self, request: Request) -> Response:
        """GET /api/v2/job_statuses/{id}/events: status changes as Server-Sent Events."""
        tenant = tenant_of(request)
        job_id = job_id_param(request)
        await self.reads.version(tenant, job_id)  # a 404 before the stream starts
        raw = request.headers.get("last-event-id", "")
        last_seen = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 18 else None
        stream = status_events(
            self.reads,
            self.watcher,
            tenant,
            job_id,
            last_seen=last_seen,
            render=self.renderer(request),
            keepalive=self.service.settings.keepalive_seconds,
        )
        return self.stream(request, stream)

    async def tenant_events(self, request: Request) -> Response:
        """GET /api/v2/job_statuses/events: every change of the tenant's jobs (new ones too)
        as Server-Sent Events, `results` null; Last-Event-ID resumes; never ends on its own."""
        raw = request.headers.get("last-event-id", "").strip()
        position = raw if raw and self.service.store.valid_position(raw) else None
        stream = tenant_events(
            self.reads,
            self.feeds,
            tenant_of(request),
            position=position,
            render=self.renderer(request),
            keepalive=self.service.settings.keepalive_seconds,
        )
        return self.stream(request, stream)
