"""Following one job's event stream: each status until the job finishes, resuming after a cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

import httpx
import orjson
from pydantic import ValidationError

from joblot.answers import THROTTLED, backoff, error_from, retry_after
from joblot.errors import ClientError, JoblotError
from joblot.models import JobReport
from joblot.sse import EventStreamParser, ServerSentEvent

DEFAULT_RETRY_MS = 1000  # until the server says otherwise in `retry:`
SILENT_STREAM_SECONDS = 45.0  # no byte for this long (3 keep-alives): the stream is dead


@dataclass
class Resume:
    """What carries over from one connection to the next."""

    last_id: str | None = None  # sent back as Last-Event-ID
    retry_ms: int = DEFAULT_RETRY_MS
    failures: int = 0  # connections in a row that ended without a word from the server
    wait: float = 0.0  # seconds before the next connection

    def failed(self, at_least: float = 0.0) -> None:
        """Count a connection that ended early, and wait longer after each one in a row."""
        self.failures += 1
        self.wait = max(at_least, self.retry_ms / 1000, backoff(self.failures - 1))


class Throttled(Exception):
    """The server answered 429 or 503: try again after `seconds`."""

    def __init__(self, error: ClientError, seconds: float) -> None:
        super().__init__(str(error))
        self.error, self.seconds = error, seconds


class StreamError(Exception):
    """The stream ended with an `error` event; opening it again gets the matching answer."""

    def __init__(self, error: ClientError) -> None:
        super().__init__(str(error))
        self.error = error


async def follow_job(
    http: httpx.AsyncClient, path: str, *, timeout: float, max_retries: int
) -> AsyncGenerator[JobReport, None]:
    """Each JobReport the stream at `path` sends, ending after the finished one.

    A stream that is cut, ends early, or ends with an `error` event is opened again with
    `Last-Event-ID`, after the server's `retry:` time (longer after failures in a row), so no
    change in between is lost: the server sends the current status if it is newer. An error
    answer (401, 404, ...) raises ClientError; `max_retries` failures in a row raise the last.
    """
    resume = Resume()
    limits = httpx.Timeout(timeout, read=max(timeout, SILENT_STREAM_SECONDS))
    while True:
        try:
            async with aclosing(_connection(http, path, resume, limits)) as reports:
                async for report in reports:
                    yield report
                    if report.job_status.finished:
                        return
            resume.failed()
            if resume.failures > max_retries:
                raise httpx.RemoteProtocolError(
                    f"the event stream of {path} ended {resume.failures} times in a row "
                    "before the job finished"
                )
        except httpx.TransportError:
            resume.failed()
            if resume.failures > max_retries:
                raise
        except (Throttled, StreamError) as exc:
            resume.failed(exc.seconds if isinstance(exc, Throttled) else 0.0)
            if resume.failures > max_retries:
                raise exc.error from None
        await asyncio.sleep(resume.wait)


async def _connection(
    http: httpx.AsyncClient, path: str, resume: Resume, limits: httpx.Timeout
) -> AsyncGenerator[JobReport, None]:
    """The reports of one connection to the stream, updating `resume` as it goes."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if resume.last_id is not None:
        headers["Last-Event-ID"] = resume.last_id
    async with http.stream("GET", path, headers=headers, timeout=limits) as response:
        if response.status_code >= 300:
            await response.aread()
            if response.status_code in THROTTLED:
                raise Throttled(error_from(response), retry_after(response, resume.failures))
            raise error_from(response)
        kind = response.headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            raise ClientError(
                response.status_code,
                "InvalidResponse",
                f"expected an event stream from {response.request.url}, got {kind or 'none'}",
            )
        parser = EventStreamParser(resume.last_id)
        async for chunk in response.aiter_bytes():
            heard = parser.comments
            for event in parser.feed(chunk):
                report = _report(event)
                if report is not None:
                    resume.last_id, resume.failures = event.id, 0
                    yield report
            resume.last_id = parser.last_id
            if parser.retry_ms is not None:
                resume.retry_ms = parser.retry_ms
            if parser.comments > heard:  # a keep-alive: the server is there
                resume.failures = 0


def _report(event: ServerSentEvent) -> JobReport | None:
    """The JobReport of a `job_status` event; an `error` event raises StreamError; any other
    event type is for someone else."""
    if event.event == "error":
        raise StreamError(_stream_error(event.data))
    if event.event != "job_status":
        return None
    try:
        return JobReport.model_validate_json(event.data)
    except ValidationError as exc:
        raise ClientError(
            200, "InvalidResponse", f"a job_status event that is not a JobStatus: {exc}"
        ) from None


def _stream_error(data: str) -> ClientError:
    """The ClientError an `error` event's `{"error", "description"}` names."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = None
    name = body.get("error") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        return ClientError(503, "StreamError", data[:500])
    text = body.get("description") if isinstance(body, dict) else None
    return ClientError(_status_code(name), name, text if isinstance(text, str) else "")


def _status_code(name: str) -> int:
    """The HTTP status joblot answers with for the error called `name` (503 if unknown)."""
    found: list[type[JoblotError]] = [JoblotError]
    while found:
        cls = found.pop()
        if cls.name == name and cls.status_code < 500:
            return cls.status_code
        found.extend(cls.__subclasses__())
    return 503
