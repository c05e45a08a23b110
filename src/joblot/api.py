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

from joblot import export
from joblot.auth import Authenticator
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
from joblot.following import Following
from joblot.metrics import CONTENT_TYPE, HttpMetrics, MetricsMiddleware, exposition
from joblot.models import API_PREFIX, MAX_SHOW_MANY, status_url
from joblot.openapi import openapi_document
from joblot.params import (
    INDEX,
    JOB_ID,
    LIST_KEY,
    base_url,
    decode_cursor,
    job_filter,
    job_id_param,
    page_params,
    prefer_wait,
    read_json_body,
    success_filter,
    tags,
    tenant_of,
)
from joblot.service import Service
from joblot.status_cache import Prepared, Statuses, StatusLane
from joblot.store import JobRow, Page

log = logging.getLogger("joblot.api")

API = API_PREFIX
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


# -- rendering ------------------------------------------------------------------------------


# -- routes ---------------------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


def idempotency_key(request: Request) -> str | None:
    """The request's `Idempotency-Key`, if it sent one: 1 to 255 printable ASCII characters."""
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidParameter("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return key


class Routes:
    """The endpoint functions, bound to one Service."""

    def __init__(self, service: Service, auth_clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.auth = Authenticator(service, service.settings, auth_clock)
        self.http_metrics = HttpMetrics()
        self.statuses = Statuses(service)
        self.following = Following(service, self.auth)  # long polls and event streams

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
        version = await self.following.long_poll(request, tenant, job_id, given, wait)
        if etag(job_id, version) in tags(given):
            return Response(status_code=304, headers={"ETag": etag(job_id, version)})
        base = base_url(request, self.service)
        # woken with many others, maybe: one read and one rendering for all
        version, body = await self.following.reads.body(tenant, job_id, base)
        headers = {"ETag": etag(job_id, version), "Cache-Control": "no-cache"}
        return Response(body, headers=headers, media_type=JSONResponse.media_type)

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
        *api(f"{API}/job_statuses/events", r.following.tenant_events, "GET", json_suffix=False),
        *api(f"{API}/job_statuses/{{id}}/results", r.list_results, "GET"),
        *api(
            f"{API}/job_statuses/{{id}}/results/export", r.export_results, "GET", json_suffix=False
        ),
        *api(f"{API}/job_statuses/{{id}}/cancel", r.cancel_job, "POST"),
        *api(f"{API}/job_statuses/{{id}}/deliveries", r.list_deliveries, "GET"),
        *api(f"{API}/job_statuses/{{id}}/deliveries/redeliver", r.redeliver, "POST"),
        *api(f"{API}/job_statuses/{{id}}/retry", r.retry_job, "POST"),
        # `{id}` below also matches `<id>.json`; job_id_param takes the suffix off
        *api(f"{API}/job_statuses/{{id}}/events", r.following.job_events, "GET", json_suffix=False),
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
            await routes.following.close()
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
    app.state.end_waits = routes.following.waits.shut
    return app
