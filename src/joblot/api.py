"""The HTTP API: Zendesk-compatible job-status routes, errors as JSON, ETags and long polls."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from joblot import export
from joblot.auth import Authenticator, Caller
from joblot.bodies import (
    JSONResponse,
    error_response,
    etag,
    page_body,
    render_delivery,
    status_body,
    statuses_body,
)
from joblot.dashboard import Dashboard
from joblot.errors import (
    InvalidParameter,
    JoblotError,
    MethodNotAllowed,
    NotReady,
    RecordNotFound,
    Unauthorized,
)
from joblot.events import SharedReads, status_events, tenant_events
from joblot.feeds import Feeds
from joblot.metrics import CONTENT_TYPE, HttpMetrics, MetricsMiddleware, exposition
from joblot.models import API_PREFIX, MAX_SHOW_MANY, status_url
from joblot.openapi import openapi_document
from joblot.params import (
    INDEX,
    JOB_ID,
    LIST_KEY,
    decode_cursor,
    job_filter,
    job_id_param,
    page_params,
    prefer_wait,
    read_json_body,
    success_filter,
    tags,
)
from joblot.service import Service
from joblot.status_cache import Prepared, Statuses, StatusLane
from joblot.store import JobRow, Page
from joblot.waits import Ended, ShuttingDown, Wait, Waits, guarded
from joblot.watcher import Watcher

log = logging.getLogger("joblot.api")

API = API_PREFIX
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


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


# -- rendering ------------------------------------------------------------------------------


def base_url(request: Request, service: Service) -> str:
    """The absolute base of JobStatus urls: the configured public URL, else this request's."""
    configured = service.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


# -- routes ---------------------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


def idempotency_key(request: Request) -> str | None:
    """The request's `Idempotency-Key`, if it sent one: 1 to 255 printable ASCII characters."""
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidParameter("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return key


def tenant_of(request: Request) -> str:
    """The tenant an authenticated request acts for (set by `Routes.authenticated`)."""
    tenant: str = request.state.tenant
    return tenant


def caller_of(request: Request) -> Caller:
    """Who an authenticated request acts for: tenant and token (set by `Routes.authenticated`)."""
    caller: Caller = request.state.caller
    return caller


STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
REVOKED_EVENT = b"event: error\ndata: %s\n\n" % orjson.dumps(
    {"error": Unauthorized.name, "description": "the token of this stream was revoked"}
)


class Routes:
    """The endpoint functions, bound to one Service."""

    def __init__(self, service: Service, auth_clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.auth = Authenticator(service, service.settings, auth_clock)
        self.http_metrics = HttpMetrics()
        self.waits = Waits(self.auth, service.settings.max_streams_per_token)
        self.statuses = Statuses(service)
        self.watcher = Watcher(service.store)  # shared by every long poll and event stream
        self.reads = SharedReads(service)  # what waiters read, shared when made at once
        self.feeds = Feeds(service, self.watcher)  # one reader per tenant for its streams

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

    def authenticated(self, endpoint: Endpoint) -> Endpoint:
        """`endpoint` behind authentication: the credentials are checked before anything of
        the request is read, so a caller without them always gets 401, never a 400 or 404
        that would tell it something."""

        async def checked(request: Request) -> Response:
            caller = await self.auth.caller(request.headers.get("authorization"))
            request.state.caller, request.state.tenant = caller, caller.tenant
            return await endpoint(request)

        checked.__name__ = checked.__qualname__ = endpoint.__name__
        checked.__doc__ = endpoint.__doc__
        return checked

    async def submit_job(self, request: Request) -> Response:
        """POST /api/v2/jobs: queue a job; 202 with Location and Retry-After."""
        key = idempotency_key(request)
        doc = await read_json_body(request, self.service.settings.max_body_bytes)
        row, created = await self.service.submit_job(
            tenant_of(request), doc, key, public_url=base_url(request, self.service)
        )
        return self._accepted(request, row, created=created)

    async def retry_job(self, request: Request) -> Response:
        """POST /api/v2/job_statuses/{id}/retry: queue a new job of the job's failed items, as
        they were submitted; 202 with Location and Retry-After, as a submit."""
        job_id = job_id_param(request)
        key = idempotency_key(request)
        row, created = await self.service.retry_job(tenant_of(request), job_id, key)
        return self._accepted(request, row, created=created)

    def _accepted(self, request: Request, row: JobRow, *, created: bool) -> Response:
        """The 202 of a queued job: its status and where to poll it."""
        base = base_url(request, self.service)
        headers = {
            "Location": status_url(base, row.id),
            "Retry-After": "1",
            "ETag": etag(row.id, row.version),
        }
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(status_body(row, base), status_code=202, headers=headers)

    async def show_job(self, request: Request) -> Response:
        """GET /api/v2/job_statuses/{id}: the JobStatus, with ETag and long poll."""
        tenant = tenant_of(request)
        job_id = job_id_param(request)
        given = request.headers.get("if-none-match")
        wait = prefer_wait(request)
        if given is None or not wait:  # a plain read (the StatusLane answers most of them)
            return Prepared(await self.statuses.answer(request.scope, tenant, job_id, given))
        version = await self._long_poll(request, tenant, job_id, given, wait)
        if etag(job_id, version) in tags(given):
            return Response(status_code=304, headers={"ETag": etag(job_id, version)})
        base = base_url(request, self.service)
        # woken with many others, maybe: one read and one rendering for all
        version, body = await self.reads.body(tenant, job_id, base)
        headers = {"ETag": etag(job_id, version), "Cache-Control": "no-cache"}
        return Response(body, headers=headers, media_type=JSONResponse.media_type)

    async def _long_poll(
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

    async def list_jobs(self, request: Request) -> Response:
        """GET /api/v2/job_statuses: cursor-paginated, unfinished jobs first; `status` and
        `job_type` filter."""
        where, keep = job_filter(request)
        page = page_params(request, keep)
        after_key = decode_cursor(page.after, LIST_KEY)
        before_key = decode_cursor(page.before, LIST_KEY)
        found: Page[JobRow] = await self.service.list_jobs(
            tenant_of(request), after_key, before_key, page.size, where=where
        )
        base = base_url(request, self.service)
        body = page_body(
            request,
            page,
            statuses_body(found.rows, base),
            cursors=[r.list_key for r in found.rows],
            has_more=found.has_more,
            base=base,
        )
        return JSONResponse(body)

    async def show_many(self, request: Request) -> Response:
        """GET /api/v2/job_statuses/show_many?ids=a,b (commas plain or %2C)."""
        raw = request.query_params.get("ids")
        if raw is None:
            raise InvalidParameter("ids is required: show_many?ids=<id>,<id>")
        ids = [i.strip() for i in raw.split(",") if i.strip()]
        if len(ids) > MAX_SHOW_MANY:
            raise InvalidParameter(f"show_many takes at most {MAX_SHOW_MANY} ids")
        wanted = list(dict.fromkeys(i for i in ids if JOB_ID.fullmatch(i)))
        rows = await self.service.get_jobs(tenant_of(request), wanted)
        return JSONResponse(statuses_body(rows, base_url(request, self.service)))

    async def list_results(self, request: Request) -> Response:
        """GET /api/v2/job_statuses/{id}/results: result entries by index, in pages; with
        `success=false` only the failed ones (`true`: the succeeded ones), through an index."""
        job_id = job_id_param(request)
        success, keep = success_filter(request)
        page = page_params(request, keep)
        after_idx = decode_cursor(page.after, INDEX)
        before_idx = decode_cursor(page.before, INDEX)
        found = await self.service.list_results(
            tenant_of(request),
            job_id,
            None if after_idx is None else int(after_idx),
            None if before_idx is None else int(before_idx),
            page.size,
            success=success,
        )
        body = page_body(
            request,
            page,
            {"results": [orjson.Fragment(entry) for _, entry in found.rows]},
            cursors=[str(i) for i, _ in found.rows],
            has_more=found.has_more,
            base=base_url(request, self.service),
        )
        return JSONResponse(body)

    async def export_results(self, request: Request) -> Response:
        """GET /api/v2/job_statuses/{id}/results/export?format=jsonl|csv: every result entry
        (or, with `success`, the failed or the succeeded ones) as a file, streamed in index
        order in constant memory."""
        tenant, job_id = tenant_of(request), job_id_param(request)
        format_ = request.query_params.get("format", "jsonl")
        if format_ not in export.FORMATS:
            raise InvalidParameter(f"format must be jsonl or csv, not {format_[:50]!r}")
        success, _ = success_filter(request)
        await self.service.job_version(tenant, job_id)  # a 404 before the stream starts

        def pages() -> AsyncIterator[list[bytes]]:
            return self.service.result_pages(tenant, job_id, success=success)

        part = {None: "results", False: "failures", True: "successes"}[success]
        headers = {
            "Content-Disposition": f'attachment; filename="{job_id}-{part}.{format_}"',
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        body = export.stream(format_, pages)
        return StreamingResponse(body, media_type=export.FORMATS[format_], headers=headers)

    async def cancel_job(self, request: Request) -> Response:
        """POST /api/v2/job_statuses/{id}/cancel: stop the job; unstarted items never run."""
        row = await self.service.cancel_job(tenant_of(request), job_id_param(request))
        body = status_body(row, base_url(request, self.service))
        return JSONResponse(body, headers={"ETag": etag(row.id, row.version)})

    async def list_deliveries(self, request: Request) -> Response:
        """GET /api/v2/job_statuses/{id}/deliveries: the job's webhook deliveries."""
        rows = await self.service.list_deliveries(tenant_of(request), job_id_param(request))
        return JSONResponse({"deliveries": [render_delivery(r) for r in rows]})

    async def redeliver(self, request: Request) -> Response:
        """POST /api/v2/job_statuses/{id}/deliveries/redeliver: send the event again (202)."""
        rows = await self.service.redeliver(tenant_of(request), job_id_param(request))
        return JSONResponse({"deliveries": [render_delivery(r) for r in rows]}, status_code=202)

    async def openapi(self, request: Request) -> Response:
        """GET /openapi.json: the OpenAPI 3.1 description of this API."""
        return JSONResponse(openapi_document())

    async def metrics(self, request: Request) -> Response:
        """GET /metrics: Prometheus metrics; job counts are read from the database now."""
        counts = await self.service.metric_counts()
        body = exposition(counts, self.http_metrics, self.service.app)
        return Response(body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        """GET /healthz: the process answers and its database is reachable."""
        applied, latest = await self.service.schema_version()
        return JSONResponse({"status": "ok", "schema": applied, "latest_schema": latest})

    async def live(self, request: Request) -> Response:
        """GET /livez: the process answers (it asks the database nothing)."""
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-cache"})

    async def ready(self, request: Request) -> Response:
        """GET /readyz: the database answers and its schema is current; else 503 with
        Retry-After (at once when PostgreSQL is known to be down)."""
        applied, latest = await self.service.schema_version()
        if applied != latest:
            raise NotReady(
                f"the database schema is at migration {applied}, this joblot's is at {latest}: "
                "run `joblot migrate` with the newest version of joblot"
            )
        body = {"status": "ok", "schema": applied, "latest_schema": latest}
        return JSONResponse(body, headers={"Cache-Control": "no-cache"})


def _routes(r: Routes) -> list[Route]:
    def api(path: str, endpoint: Endpoint, method: str, *, json_suffix: bool = True) -> list[Route]:
        """An authenticated API route, also at `<path>.json` (as Zendesk's paths are)."""
        guarded = r.authenticated(endpoint)
        paths = [path, f"{path}.json"] if json_suffix else [path]
        return [Route(p, guarded, methods=[method]) for p in paths]

    return [
        *api(f"{API}/jobs", r.submit_job, "POST"),
        *api(f"{API}/job_statuses", r.list_jobs, "GET"),
        *api(f"{API}/job_statuses/show_many", r.show_many, "GET"),
        # before `{id}`, which `events` would match too
        *api(f"{API}/job_statuses/events", r.tenant_events, "GET", json_suffix=False),
        *api(f"{API}/job_statuses/{{id}}/results", r.list_results, "GET"),
        *api(
            f"{API}/job_statuses/{{id}}/results/export", r.export_results, "GET", json_suffix=False
        ),
        *api(f"{API}/job_statuses/{{id}}/cancel", r.cancel_job, "POST"),
        *api(f"{API}/job_statuses/{{id}}/deliveries", r.list_deliveries, "GET"),
        *api(f"{API}/job_statuses/{{id}}/deliveries/redeliver", r.redeliver, "POST"),
        *api(f"{API}/job_statuses/{{id}}/retry", r.retry_job, "POST"),
        # `{id}` below also matches `<id>.json`; job_id_param takes the suffix off
        *api(f"{API}/job_statuses/{{id}}/events", r.job_events, "GET", json_suffix=False),
        *api(f"{API}/job_statuses/{{id}}", r.show_job, "GET", json_suffix=False),
        Route("/openapi.json", r.openapi, methods=["GET"]),
        Route("/healthz", r.health, methods=["GET"]),
        Route("/livez", r.live, methods=["GET"]),
        Route("/readyz", r.ready, methods=["GET"]),
        Route("/metrics", r.metrics, methods=["GET"]),
    ]


async def _joblot_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, JoblotError)
    if exc.status_code >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.description)
    headers = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="joblot", Basic realm="joblot"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return error_response(exc, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(
            MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        )
    return error_response(RecordNotFound(f"there is nothing at {request.url.path[:200]}"))


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before its request was read whole: nothing to answer, no error."""
    log.debug("the client went away during %s %s", request.method, request.url.path)
    return Response(status_code=400)  # never sent: the connection is gone


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    body = {"error": "InternalError", "description": "the server failed; it has been logged"}
    return JSONResponse(body, status_code=500)


def create_app(
    service: Service,
    on_close: Callable[[], Awaitable[None]] | None = None,
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
    auth_clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The ASGI app serving `service`. Each of `background` runs as a task while the app
    serves; `on_close` runs at shutdown, after they stopped (e.g. to close the store).
    `auth_clock` times the token caches and rate limits (tests step it forward)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(run()) for run in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await routes.watcher.close()
            if on_close is not None:
                await on_close()

    routes = Routes(service, auth_clock)
    app = Starlette(
        routes=[*_routes(routes), *Dashboard().routes()],
        middleware=[
            # first: a status read costs no router and no other middleware
            Middleware(
                StatusLane,
                statuses=routes.statuses,
                auth=routes.auth,
                metrics=routes.http_metrics,
                errors=_joblot_error,
            ),
            Middleware(MetricsMiddleware, metrics=routes.http_metrics),
        ],
        exception_handlers={
            JoblotError: _joblot_error,
            HTTPException: _http_error,
            ClientDisconnect: _client_gone,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    # A server that stops ends its open streams and long polls first (see server.Server).
    app.state.end_waits = routes.waits.shut
    return app
