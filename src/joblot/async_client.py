"""AsyncClient: the joblot HTTP API over httpx for asyncio code, the one core that Client runs."""

from __future__ import annotations

import asyncio
import builtins
import enum
import functools
import time
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from contextlib import aclosing
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from joblot.answers import THROTTLED, backoff, error_from, json_body, retry_after
from joblot.follow import follow_job
from joblot.models import (
    API_PREFIX,
    MAX_PAGE_SIZE,
    MAX_SHOW_MANY,
    JobReport,
    JobStats,
    JobStatus,
    Status,
)

API = API_PREFIX


@functools.cache
def _user_agent() -> str:
    """`joblot-client/<version>`, so server logs can tell clients apart."""
    try:
        return f"joblot-client/{version('joblot')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "joblot-client/0"


class Retry(enum.Enum):
    """Which failures a request may be sent again after."""

    NEVER = "never"  # a plain submit: a second try could queue the job twice
    THROTTLED = "throttled"  # only a 429/503 answer, where the server did nothing
    ALWAYS = "always"  # idempotent: throttling and connection errors alike


def job_status(body: dict[str, Any]) -> JobStatus:
    """The JobStatus inside a `{"job_status": {...}}` body."""
    return JobStatus.model_validate(body["job_status"])


def job_report(body: dict[str, Any]) -> JobReport:
    """The JobStatus and `job_stats` of a `{"job_status": {...}, "job_stats": {...}}` body."""
    return JobReport.model_validate(body)


def list_filters(status: str | Iterable[str] | None, job_type: str | None) -> dict[str, str]:
    """The query parameters of a filtered job listing: `status` one status or several."""
    params: dict[str, str] = {}
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        params["status"] = ",".join(Status(s).value for s in wanted)
    if job_type is not None:
        params["job_type"] = job_type
    return params


def status_path(job_id: str, suffix: str = "") -> str:
    """The path of one job status, with the id escaped so it cannot leave its segment."""
    return f"{API}/job_statuses/{quote(job_id, safe='')}{suffix}.json"


def checked_page_size(page_size: int) -> int:
    """A page size the server accepts: at least 1, at most 100."""
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    return min(page_size, MAX_PAGE_SIZE)


def wait_seconds(poll: float, deadline: float | None) -> int | None:
    """The `Prefer: wait=N` of the next long poll; None once `deadline` has passed."""
    if deadline is None:
        return max(1, int(poll))
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    return max(1, int(min(poll, remaining)))


class AsyncClient:
    """The joblot API (and Zendesk's job_statuses) for asyncio code; follows cursors, retries."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_retries: int = 5,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        headers = {"User-Agent": _user_agent(), "Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout  # a long poll adds its wait to this
        self._max_retries = max_retries
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _request(
        self, method: str, path: str, retry: Retry, **options: Any
    ) -> httpx.Response:
        """Send a request, sleeping and resending on throttling or connection errors."""
        for attempt in range(self._max_retries + 1):
            last = attempt == self._max_retries
            try:
                response = await self._http.request(method, path, **options)
            except httpx.TransportError:
                if last or retry is not Retry.ALWAYS:
                    raise
                await asyncio.sleep(backoff(attempt))
                continue
            if last or retry is Retry.NEVER or response.status_code not in THROTTLED:
                return response
            await asyncio.sleep(retry_after(response, attempt))
        raise AssertionError("unreachable: the last attempt always returns or raises")

    async def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return json_body(await self._request("GET", path, Retry.ALWAYS, params=params))

    async def submit(
        self,
        job_type: str,
        items: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> JobStatus:
        """Queue a job of `items`; with `idempotency_key` a retry returns the same job; with
        `callback_url` a signed event is POSTed there when the job finishes."""
        headers: dict[str, str] = {}
        retry = Retry.NEVER
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
            retry = Retry.ALWAYS
        job: dict[str, Any] = {"job_type": job_type, "items": [dict(item) for item in items]}
        if callback_url is not None:
            job["callback_url"] = callback_url
        body = {"job": job}
        response = await self._request("POST", f"{API}/jobs", retry, json=body, headers=headers)
        return job_status(json_body(response))

    async def get(self, job_id: str) -> JobStatus:
        """The current JobStatus of a job."""
        return job_status(await self._get(status_path(job_id)))

    async def report(self, job_id: str) -> JobReport:
        """The current JobStatus of a job with its `job_stats` (failures and times)."""
        return job_report(await self._get(status_path(job_id)))

    async def list(
        self,
        *,
        page_size: int = 100,
        status: str | Iterable[str] | None = None,
        job_type: str | None = None,
    ) -> AsyncGenerator[JobStatus, None]:
        """Every job (of these statuses, of this type), unfinished first, page by page."""
        reports = self.reports(page_size=page_size, status=status, job_type=job_type)
        async with aclosing(reports):
            async for report in reports:
                yield report.job_status

    async def reports(
        self,
        *,
        page_size: int = 100,
        status: str | Iterable[str] | None = None,
        job_type: str | None = None,
    ) -> AsyncGenerator[JobReport, None]:
        """As `list`, each JobStatus with its `job_stats`."""
        seen: set[str] = set()  # a job that finishes mid-listing moves; show it once
        params = list_filters(status, job_type)
        pages = self._pages(f"{API}/job_statuses.json", page_size, params)
        async with aclosing(pages):
            async for body in pages:
                stats = body.get("job_stats") or {}
                for entry in body["job_statuses"]:
                    found = JobStatus.model_validate(entry)
                    if found.id not in seen:
                        seen.add(found.id)
                        extra = stats.get(found.id)
                        yield JobReport(
                            job_status=found,
                            job_stats=None if extra is None else JobStats.model_validate(extra),
                        )

    async def show_many(self, ids: builtins.list[str]) -> builtins.list[JobStatus]:
        """The JobStatuses of the jobs among `ids` that exist, in the order asked."""
        found: builtins.list[JobStatus] = []
        for start in range(0, len(ids), MAX_SHOW_MANY):
            chunk = ",".join(ids[start : start + MAX_SHOW_MANY])
            body = await self._get(f"{API}/job_statuses/show_many.json", {"ids": chunk})
            found.extend(JobStatus.model_validate(s) for s in body["job_statuses"])
        return found

    async def results(
        self, job_id: str, *, page_size: int = 100, success: bool | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """A job's result entries by index, fetched page by page (any job size); with
        `success=False` only the failed ones, with `success=True` only the succeeded ones."""
        params = {} if success is None else {"success": "true" if success else "false"}
        pages = self._paginate(status_path(job_id, "/results"), "results", page_size, params)
        async with aclosing(pages):
            async for entry in pages:
                yield entry

    async def export(
        self, job_id: str, *, format: str = "jsonl", success: bool | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Every result entry of a job as a file, `jsonl` or `csv`, streamed in chunks as the
        server writes them (or only the failed or succeeded entries, as in `results`)."""
        params = {"format": format}
        if success is not None:
            params["success"] = "true" if success else "false"
        path = f"{API}/job_statuses/{quote(job_id, safe='')}/results/export"
        async with self._http.stream("GET", path, params=params) as response:
            if response.status_code >= 300:
                await response.aread()
                raise error_from(response)
            async for chunk in response.aiter_bytes():
                yield chunk

    async def events(self, job_id: str) -> AsyncGenerator[JobStatus, None]:
        """Each JobStatus of a job as it changes, from its event stream, until it has finished
        (the current one first); a dropped connection resumes with `Last-Event-ID`."""
        reports = self.report_events(job_id)
        async with aclosing(reports):
            async for report in reports:
                yield report.job_status

    async def report_events(self, job_id: str) -> AsyncGenerator[JobReport, None]:
        """As `events`, each JobStatus with its `job_stats` (how many items failed)."""
        path = f"{API}/job_statuses/{quote(job_id, safe='')}/events"
        reports = follow_job(self._http, path, timeout=self._timeout, max_retries=self._max_retries)
        async with aclosing(reports):
            async for report in reports:
                yield report

    async def cancel(self, job_id: str) -> JobStatus:
        """Stop a job: items not yet started never run, and it ends `failed`."""
        response = await self._request("POST", status_path(job_id, "/cancel"), Retry.THROTTLED)
        return job_status(json_body(response))

    async def deliveries(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The job's webhook deliveries, each with every attempt."""
        body = await self._get(status_path(job_id, "/deliveries"))
        deliveries: builtins.list[dict[str, Any]] = body["deliveries"]
        return deliveries

    async def redeliver(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """Send the job's webhook event again (a new round of attempts); its deliveries."""
        path = status_path(job_id, "/deliveries/redeliver")
        body = json_body(await self._request("POST", path, Retry.THROTTLED))
        deliveries: builtins.list[dict[str, Any]] = body["deliveries"]
        return deliveries

    async def retry(self, job_id: str, *, idempotency_key: str | None = None) -> JobStatus:
        """Queue a new job of the failed items of a finished job, as they were submitted; with
        `idempotency_key` a retry of this call returns the same new job."""
        headers: dict[str, str] = {}
        retry = Retry.THROTTLED  # nothing was queued when the server throttled
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
            retry = Retry.ALWAYS
        path = status_path(job_id, "/retry")
        response = await self._request("POST", path, retry, headers=headers)
        return job_status(json_body(response))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 25.0,
    ) -> JobStatus:
        """The JobStatus once the job is completed or failed, by long polling; or TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        response = await self._request("GET", status_path(job_id), Retry.ALWAYS)
        status, tag = job_status(json_body(response)), response.headers.get("etag")
        while not status.finished:
            seconds = wait_seconds(poll, deadline)
            if seconds is None:
                raise TimeoutError(
                    f"job {job_id} is still {status.status.value} after {timeout} s; "
                    "wait longer, or cancel it"
                )
            headers: dict[str, str] = {}
            if tag is None:  # no long poll on this server (Zendesk): poll gently instead
                await asyncio.sleep(min(1.0, seconds))
            else:
                headers = {"If-None-Match": tag, "Prefer": f"wait={seconds}"}
            response = await self._request(
                "GET",
                status_path(job_id),
                Retry.ALWAYS,
                headers=headers,
                timeout=self._timeout + seconds,
            )
            tag = response.headers.get("etag", tag)
            if response.status_code != 304:
                status = job_status(json_body(response))
        return status

    async def _paginate(
        self, path: str, key: str, page_size: int, params: dict[str, str] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The entries under `key` of every page, following `meta.after_cursor`."""
        pages = self._pages(path, page_size, params)
        async with aclosing(pages):
            async for body in pages:
                for entry in body[key]:
                    yield entry

    async def _pages(
        self, path: str, page_size: int, params: dict[str, str] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every page's body, following `meta.after_cursor` with the same `params`."""
        query = {**(params or {}), "page[size]": str(checked_page_size(page_size))}
        while True:
            body = await self._get(path, query)
            yield body
            meta = body.get("meta") or {}
            cursor = meta.get("after_cursor")
            if not meta.get("has_more") or not cursor:
                return
            query = {**query, "page[after]": str(cursor)}
