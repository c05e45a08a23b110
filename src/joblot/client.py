"""AsyncClient and Client: the joblot HTTP API over httpx, one async core with a sync facade.

The async core is `joblot.async_client`; Client, here, runs it on a private event-loop thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from joblot.async_client import (
    API,
    AsyncClient,
    Retry,
    checked_page_size,
    job_report,
    job_status,
    list_filters,
    status_path,
    wait_seconds,
)
from joblot.models import JobReport, JobStatus

# the async core's names, importable from here as they always were
__all__ = [
    "API",
    "CLOSE_SECONDS",
    "AsyncClient",
    "Client",
    "Retry",
    "checked_page_size",
    "job_report",
    "job_status",
    "list_filters",
    "status_path",
    "wait_seconds",
]

T = TypeVar("T")

CLOSE_SECONDS = 5.0  # how long leaving an iteration early waits for its request to close


class Client:
    """The synchronous joblot client: runs an AsyncClient on a private event-loop thread."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_retries: int = 5,
    ) -> None:
        self._async = AsyncClient(
            url, token, timeout=timeout, transport=transport, max_retries=max_retries
        )
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="joblot-client"
        )
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the event-loop thread."""
        if self._closed:
            return
        try:
            self._run(self._async.aclose())
            self._run(self._loop.shutdown_asyncgens())  # iterators left half-read
            self._run(self._loop.shutdown_default_executor())
        finally:
            self._closed = True
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the client's loop and wait for its outcome."""
        if self._closed or threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("this joblot Client is closed (or called from its own loop)")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the request running
            raise

    def _iterate(self, agen: AsyncGenerator[T, None]) -> Iterator[T]:
        """A sync iterator over an async generator running on the client's loop."""
        try:
            while True:
                try:
                    value = self._run(_next(agen))
                except StopAsyncIteration:
                    return
                yield value
        finally:
            # Left early (break, an error, garbage collection): close the generator so that
            # its connection goes back, and wait for that unless on the loop thread itself
            # (garbage collection may run there), so that `close` never closes it twice.
            if not self._closed and self._loop.is_running():
                closing = asyncio.run_coroutine_threadsafe(agen.aclose(), self._loop)
                if threading.current_thread() is not self._thread:
                    with contextlib.suppress(Exception):
                        closing.result(timeout=CLOSE_SECONDS)

    def submit(
        self,
        job_type: str,
        items: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> JobStatus:
        """Queue a job of `items`; with `idempotency_key` a retry returns the same job; with
        `callback_url` a signed event is POSTed there when the job finishes."""
        return self._run(
            self._async.submit(
                job_type, items, idempotency_key=idempotency_key, callback_url=callback_url
            )
        )

    def get(self, job_id: str) -> JobStatus:
        """The current JobStatus of a job."""
        return self._run(self._async.get(job_id))

    def report(self, job_id: str) -> JobReport:
        """The current JobStatus of a job with its `job_stats` (failures and times)."""
        return self._run(self._async.report(job_id))

    def list(
        self,
        *,
        page_size: int = 100,
        status: str | Iterable[str] | None = None,
        job_type: str | None = None,
    ) -> Iterator[JobStatus]:
        """Every job (of these statuses, of this type), unfinished first, page by page."""
        return self._iterate(
            self._async.list(page_size=page_size, status=status, job_type=job_type)
        )

    def reports(
        self,
        *,
        page_size: int = 100,
        status: str | Iterable[str] | None = None,
        job_type: str | None = None,
    ) -> Iterator[JobReport]:
        """As `list`, each JobStatus with its `job_stats`."""
        return self._iterate(
            self._async.reports(page_size=page_size, status=status, job_type=job_type)
        )

    def show_many(self, ids: builtins.list[str]) -> builtins.list[JobStatus]:
        """The JobStatuses of the jobs among `ids` that exist, in the order asked."""
        return self._run(self._async.show_many(ids))

    def results(
        self, job_id: str, *, page_size: int = 100, success: bool | None = None
    ) -> Iterator[dict[str, Any]]:
        """A job's result entries by index, fetched page by page (any job size); with
        `success=False` only the failed ones, with `success=True` only the succeeded ones."""
        return self._iterate(self._async.results(job_id, page_size=page_size, success=success))

    def export(
        self, job_id: str, *, format: str = "jsonl", success: bool | None = None
    ) -> Iterator[bytes]:
        """Every result entry of a job as a file, `jsonl` or `csv`, streamed in chunks as the
        server writes them (or only the failed or succeeded entries, as in `results`)."""
        return self._iterate(self._async.export(job_id, format=format, success=success))

    def events(self, job_id: str) -> Iterator[JobStatus]:
        """Each JobStatus of a job as it changes, from its event stream, until it has finished
        (the current one first); a dropped connection resumes with `Last-Event-ID`."""
        return self._iterate(self._async.events(job_id))

    def report_events(self, job_id: str) -> Iterator[JobReport]:
        """As `events`, each JobStatus with its `job_stats` (how many items failed)."""
        return self._iterate(self._async.report_events(job_id))

    def cancel(self, job_id: str) -> JobStatus:
        """Stop a job: items not yet started never run, and it ends `failed`."""
        return self._run(self._async.cancel(job_id))

    def deliveries(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The job's webhook deliveries, each with every attempt."""
        return self._run(self._async.deliveries(job_id))

    def redeliver(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """Send the job's webhook event again (a new round of attempts); its deliveries."""
        return self._run(self._async.redeliver(job_id))

    def retry(self, job_id: str, *, idempotency_key: str | None = None) -> JobStatus:
        """Queue a new job of the failed items of a finished job, as they were submitted; with
        `idempotency_key` a retry of this call returns the same new job."""
        return self._run(self._async.retry(job_id, idempotency_key=idempotency_key))

    def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 25.0) -> JobStatus:
        """The JobStatus once the job is completed or failed, by long polling; or TimeoutError."""
        return self._run(self._async.wait(job_id, timeout=timeout, poll=poll))


async def _next(agen: AsyncGenerator[T, None]) -> T:
    """The next value of `agen` (StopAsyncIteration once exhausted), as a coroutine."""
    return await anext(agen)
