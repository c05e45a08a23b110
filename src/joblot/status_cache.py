"""Plain status reads, answered in front of the router; settled jobs' statuses kept in memory.

A settled job (completed, or failed with every item finished) never changes again: no
worker holds any of its items, so no result, count or message of it can still arrive, and
nothing else writes its row. Only the purge deletes it, and only after it expired, which
each kept status remembers: past that instant it is read from the database again (and found
missing). So answering a settled job from memory never returns a status older than the last
committed change, in this process or any other. Jobs that may still change are read from
the database on every request.

`StatusLane` answers every plain `GET /api/v2/job_statuses/{id}` (not a long poll) in front
of the app's middleware and router, after the same authentication: a status read is most of
what this service does, and it is cheapest without the layers every route passes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from joblot.auth import Authenticator
from joblot.bodies import etag, status_body
from joblot.errors import JoblotError
from joblot.metrics import HttpMetrics
from joblot.models import API_PREFIX, Status
from joblot.params import tags
from joblot.service import Service
from joblot.store import JobRow

CACHE_BYTES = 32 * 1024 * 1024  # rendered bodies kept per API process, oldest dropped first
MAX_ORIGINS = 1000  # request origins whose base URL is remembered
ROUTE = f"{API_PREFIX}/job_statuses/{{id}}"  # the metrics label of the route
_PATH = re.compile(re.escape(API_PREFIX) + r"/job_statuses/([0-9a-f]{32})(?:\.json)?")
_WANTED = frozenset((b"authorization", b"if-none-match", b"prefer"))


def settled(row: JobRow) -> bool:
    """Whether the job can no longer change: finished with every item finished (a failed job
    whose items were still running when it stopped takes their results until they end)."""
    return row.status in (Status.COMPLETED, Status.FAILED) and row.progress >= row.total


def origin(scope: Scope) -> Hashable:
    """What a status's `url` depends on besides the job, when no public URL is configured:
    the request's scheme, Host header (or server address) and root path."""
    host = next((v for k, v in scope["headers"] if k == b"host"), None)
    server = scope.get("server")  # a list under some servers (and httpx's ASGITransport)
    where = tuple(server) if server is not None else None
    return (scope.get("scheme"), host, where, scope.get("root_path", ""))


@dataclass(frozen=True, slots=True)
class Rendered:
    """A JobStatus body ready to send, with its ETag, for the tenant that owns the job."""

    tenant: str
    etag: str
    body: bytes
    expires_at: float  # when the job expires: it must not be answered from memory after that
    head: list[tuple[bytes, bytes]]  # the 200's headers

    @classmethod
    def of(cls, tenant: str, row: JobRow, base: str, expires_at: float) -> Rendered:
        """The status of `row` as show_job answers it."""
        tag = etag(row.id, row.version)
        body = orjson.dumps(status_body(row, base))
        head = [
            (b"etag", tag.encode()),
            (b"cache-control", b"no-cache"),
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
        ]
        return cls(tenant, tag, body, expires_at, head)


class StatusCache:
    """Rendered statuses of settled jobs by job id and origin, bounded in bytes."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._kept: dict[tuple[str, Hashable], Rendered] = {}
        self._bytes = 0

    def get(self, job_id: str, where: Hashable, now: float) -> Rendered | None:
        """The kept status of the job, unless it has expired by `now`."""
        found = self._kept.get((job_id, where))
        if found is not None and now >= found.expires_at:
            self._drop((job_id, where))
            return None
        return found

    def keep(self, job_id: str, where: Hashable, rendered: Rendered) -> None:
        """Keep a settled job's status; the oldest kept go when the bytes run out."""
        key = (job_id, where)
        self._drop(key)
        if len(rendered.body) > self.max_bytes:
            return
        while self._kept and self._bytes + len(rendered.body) > self.max_bytes:
            self._drop(next(iter(self._kept)))
        self._kept[key] = rendered
        self._bytes += len(rendered.body)

    def _drop(self, key: tuple[str, Hashable]) -> None:
        gone = self._kept.pop(key, None)
        if gone is not None:
            self._bytes -= len(gone.body)

    def __len__(self) -> int:
        return len(self._kept)


@dataclass(frozen=True, slots=True)
class Answer:
    """A status read's answer, ready to send as it is."""

    code: int
    head: list[tuple[bytes, bytes]]
    body: bytes


class Prepared(Response):
    """The Starlette response of an Answer (for the route)."""

    def __init__(self, answer: Answer) -> None:
        self.status_code = answer.code
        self.body = answer.body
        self.raw_headers = list(answer.head)
        self.background = None


def _not_modified(tag: bytes) -> Answer:
    return Answer(304, [(b"etag", tag)], b"")


class Statuses:
    """Plain reads of one JobStatus (not long polls): from the cache when the job has
    settled, else from the database (keeping it if it has settled since)."""

    def __init__(self, service: Service, cache: StatusCache | None = None) -> None:
        self.service = service
        self.cache = cache if cache is not None else StatusCache()
        self.public_url = service.settings.public_url
        self._bases: dict[Hashable, str] = {}

    def where(self, scope: Scope) -> Hashable:
        """The cache key's part for the request: what its statuses' `url`s depend on."""
        return None if self.public_url else origin(scope)

    def base(self, scope: Scope) -> str:
        """The absolute base of JobStatus urls: the configured public URL, else the request's
        (remembered by origin: working it out costs more than the rest of a read)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        where = origin(scope)
        found = self._bases.get(where)
        if found is None:
            if len(self._bases) >= MAX_ORIGINS:  # Host headers are the clients' to choose
                self._bases.clear()
            found = self._bases[where] = str(Request(scope).base_url).rstrip("/")
        return found

    def kept(self, scope: Scope, job_id: str) -> Rendered | None:
        """The job's kept status, for whichever tenant owns it (the caller must check)."""
        return self.cache.get(job_id, self.where(scope), self.service.clock())

    async def answer(self, scope: Scope, tenant: str, job_id: str, given: str | None) -> Answer:
        """`304` when `given` (If-None-Match) names the status's current ETag, else `200` and
        the status; RecordNotFound when the tenant has no such job."""
        kept = self.kept(scope, job_id)
        if kept is None or kept.tenant != tenant:
            if given is not None:  # unchanged costs one version lookup, not the whole status
                tag = etag(job_id, await self.service.job_version(tenant, job_id))
                if tag in tags(given):
                    return _not_modified(tag.encode())
            kept = await self.render(scope, tenant, job_id)
        if given is not None and kept.etag in tags(given):
            return _not_modified(kept.head[0][1])
        return Answer(200, kept.head, kept.body)

    async def render(self, scope: Scope, tenant: str, job_id: str) -> Rendered:
        """The tenant's job's status read from the database, kept if the job has settled."""
        row = await self.service.get_job(tenant, job_id)
        base = self.base(scope)
        if not settled(row):
            return Rendered.of(tenant, row, base, float("-inf"))
        # Read after the row: a settled job's expiry is fixed by then; None if purged meanwhile.
        expires_at = await self.service.job_expiry(tenant, job_id)
        rendered = Rendered.of(tenant, row, base, expires_at or float("-inf"))
        if expires_at is not None:
            self.cache.keep(job_id, self.where(scope), rendered)
        return rendered


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class StatusLane:
    """Pure ASGI middleware: a plain `GET` of a JobStatus is answered here, in front of the
    router and the other middleware, with the same authentication, the same answers (errors
    through the app's own handler) and counted in the same metrics. Everything else goes on
    to `app`, and so does a long poll (`Prefer`): waiting is the route's.
    """

    def __init__(
        self,
        app: ASGIApp,
        statuses: Statuses,
        auth: Authenticator,
        metrics: HttpMetrics,
        errors: ErrorHandler,
    ) -> None:
        self.app = app
        self.statuses = statuses
        self.auth = auth
        self.metrics = metrics
        self.errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            match = _PATH.fullmatch(scope["path"])
            if match is not None:
                headers = _headers(scope)
                if b"prefer" not in headers:
                    await self._answer(scope, match[1], headers, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self, scope: Scope, job_id: str, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        code = 500  # unless an answer is sent: an exception that escaped
        try:
            try:
                caller = await self.auth.caller(_text(headers.get(b"authorization")))
                given = _text(headers.get(b"if-none-match"))
                answer = await self.statuses.answer(scope, caller.tenant, job_id, given)
            except JoblotError as exc:
                response = await self.errors(Request(scope), exc)
                await response(scope, receive, send)
                code = response.status_code
                return
            await send(
                {"type": "http.response.start", "status": answer.code, "headers": answer.head}
            )
            await send({"type": "http.response.body", "body": answer.body})
            code = answer.code
        finally:
            self.metrics.observe(ROUTE, code, time.perf_counter() - started)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The first of each header the lane reads (as Starlette's `headers.get` takes)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _WANTED and name not in found:
            found[name] = value
    return found


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
