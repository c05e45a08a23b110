"""The worker: claim a batch, run its handlers, report results, renew leases, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from joblot import codec
from joblot.app import App, Context, ItemFailed, JobAborted, JobType
from joblot.errors import JoblotError
from joblot.logs import job_event
from joblot.maintenance import Maintenance
from joblot.models import failure_entry, success_entry
from joblot.service import Service
from joblot.store import Claim, ClaimedItem, FinishedItem, FinishOutcome

log = logging.getLogger("joblot.worker")

FLUSH_SECONDS = 0.1  # how often a running batch reports progress
TARGET_BATCH_SECONDS = 0.5  # claim about this much work at a time, so small jobs get turns


def to_result(job_type: JobType, index: int, ident: dict[str, Any], returned: Any) -> FinishedItem:
    """Turn what a handler returned (or raised, as `returned`) into a result entry.

    `ident` holds the item's `id`, taken before the handler ran (handlers may change items).
    Whatever the handler did, this returns an entry: a result that cannot be stored fails
    its item with `InvalidResult` instead of the worker, and text that a database cannot hold
    is made storable (see `joblot.codec`).
    """
    if isinstance(returned, BaseException):
        return _failure(job_type, index, ident, *_describe(returned))
    if returned is None:
        returned = {}
    if not isinstance(returned, dict):
        kind = type(returned).__name__
        details = f"the handler returned {kind}; it must return a dict or None"
        return _failure(job_type, index, ident, "InvalidResult", details)
    try:
        entry = success_entry(index, ident, job_type.action, returned)
        return FinishedItem(index, True, codec.dumps_storable(entry))
    except Exception as exc:  # not JSON, or a value whose str() raises
        details = f"the handler's result is not JSON-serializable: {_safe_str(exc)}"
        return _failure(job_type, index, ident, "InvalidResult", details)


def _failure(
    job_type: JobType, index: int, ident: dict[str, Any], error: str, details: str
) -> FinishedItem:
    error, details = codec.without_surrogates(error), codec.without_surrogates(details)
    entry = failure_entry(index, ident, job_type.action, error, details)
    return FinishedItem(index, False, codec.dumps(entry))


def _ident(item: dict[str, Any]) -> dict[str, Any]:
    return {"id": item["id"]} if "id" in item else {}


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, ItemFailed):
        return _safe_str(exc.error), _safe_str(exc.details)
    return type(exc).__name__, _safe_str(exc) or type(exc).__name__


def _safe_str(value: object) -> str:
    """str(value), or a plain stand-in when its __str__ raises (handlers' objects may)."""
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be shown as text>"


class _Refused(Exception):
    """The database refused results or a message (logged where it happened)."""


def _indexes(results: list[FinishedItem]) -> str:
    shown = ", ".join(str(it.index) for it in results[:20])
    return shown + (f" and {len(results) - 20} more" if len(results) > 20 else "")


def _unstorable(batch: Batch, finished: FinishedItem) -> FinishedItem:
    """A plain failed entry in place of a result the database refused."""
    ident = {}
    with contextlib.suppress(Exception):
        ident = _ident(codec.decode_item(finished.entry))
    details = "the database refused this item's result; see the worker's log"
    return _failure(batch.job_type, finished.index, ident, "UnstorableResult", details)


class Batch:
    """One claimed batch while it runs: items still to start, results not yet reported."""

    def __init__(self, claim: Claim, job_type: JobType) -> None:
        self.claim = claim
        self.job_type = job_type
        self.todo: deque[ClaimedItem] = deque(claim.items)
        self.done: list[FinishedItem] = []
        self.message: str | None = None
        self.aborted: str | None = None  # the reason of the first item that aborted the job
        self.aborted_entries: list[FinishedItem] = []  # reported together with the abort
        self.stopped = False  # no new item starts once set
        self.lock = threading.Lock()

    def next_item(self) -> ClaimedItem | None:
        """The next item to start, or None when the batch is drained or stopped."""
        if self.stopped:
            return None
        try:
            return self.todo.popleft()
        except IndexError:
            return None

    def begin(self, item: ClaimedItem) -> tuple[dict[str, Any], dict[str, Any], Context]:
        """What a handler gets for `item`, and the item's `id`, taken before it runs."""
        payload = codec.decode_item(item.payload)
        ctx = Context(self.claim.job_id, self.job_type.name, item.index, item.attempt)
        return payload, _ident(payload), ctx

    def record(self, item: ClaimedItem, ident: dict[str, Any], returned: Any, ctx: Context) -> None:
        """Keep an item's result (and the message its handler reported) until the next flush."""
        result = to_result(self.job_type, item.index, ident, returned)
        with self.lock:
            self.done.append(result)
            if ctx.reported is not None:
                self.message = ctx.reported

    def abort(self, item: ClaimedItem, ident: dict[str, Any], exc: JobAborted) -> None:
        """The item's handler aborted the whole job: keep its `Aborted` entry for the report
        that stops the job, and start no more items."""
        reason = _safe_str(exc.message)
        entry = _failure(self.job_type, item.index, ident, "Aborted", reason)
        with self.lock:
            self.aborted_entries.append(entry)
            if self.aborted is None:
                self.aborted = reason
            self.stopped = True

    def take(self) -> tuple[list[FinishedItem], str | None]:
        """The results and message gathered since the last flush."""
        with self.lock:
            done, self.done = self.done, []
            message, self.message = self.message, None
        return done, message


class Worker:
    """Runs the handlers of an App against the queue until asked to stop."""

    def __init__(self, service: Service, app: App, worker_id: str | None = None) -> None:
        self.service = service
        self.app = app
        self.settings = service.settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.job_types = app.names()
        self.concurrency = self.settings.concurrency
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="joblot-handler")
        self._item_slots = asyncio.Semaphore(self.concurrency)
        self._batches: dict[int, Batch] = {}
        # Jobs this worker saw stop, so a batch claimed before the database knew is not run.
        self._stopped_jobs: dict[str, None] = {}
        self._claim_size = min(self.settings.batch_size, self.concurrency * 2)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; running items finish and are reported."""
        self._stopping.set()

    async def run(self) -> None:
        """Claim and run batches until `stop()`; then drain and hand back what never started."""
        helpers = [
            asyncio.create_task(self._every(self.settings.lease_seconds / 3, self._renew_leases)),
            asyncio.create_task(Maintenance(self.service).run()),
        ]
        running: set[asyncio.Task[None]] = set()
        try:
            await self._claim_loop(running)
        finally:
            for batch in self._batches.values():
                batch.stopped = True
            if running:
                await asyncio.wait(running)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self._threads.shutdown(wait=True)

    async def _claim_loop(self, running: set[asyncio.Task[None]]) -> None:
        in_flight = asyncio.Semaphore(2)  # one batch runs while the next is claimed/reported
        while not self._stopping.is_set():
            await in_flight.acquire()
            claim = await self._claim()
            if claim is None:
                in_flight.release()
                await self._idle()
                continue
            task = asyncio.create_task(self._run_batch(claim))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: in_flight.release())

    async def _idle(self) -> None:
        """Wait for work, a stop request, or the poll interval, whichever comes first."""
        waits = [
            asyncio.create_task(self._stopping.wait()),
            asyncio.create_task(self.service.wait_for_work(self.settings.idle_poll_seconds)),
        ]
        try:
            await asyncio.wait(
                waits,
                timeout=self.settings.idle_poll_seconds * 2,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _claim(self) -> Claim | None:
        try:
            return await self.service.claim_items(self.worker_id, self.job_types, self._claim_size)
        except JoblotError as exc:
            log.warning("claim failed, retrying: %s", exc.description)
        except Exception:
            log.exception("claim failed unexpectedly, retrying")
        return None

    async def _run_batch(self, claim: Claim) -> None:
        """Run one claimed batch to its end. Nothing escapes: a failure is logged with the job
        and the batch's lease is released or left to lapse, so its items run again."""
        try:
            await self._run_claim(claim)
        except Exception:
            log.exception(
                "batch of job %s (lease %d) failed unexpectedly; its items go back to the queue "
                "when the lease lapses",
                claim.job_id,
                claim.lease_id,
            )
        finally:
            self._batches.pop(claim.lease_id, None)

    async def _run_claim(self, claim: Claim) -> None:
        job_type = self.app.get(claim.job_type)
        assert job_type is not None  # only registered types are claimed
        batch = Batch(claim, job_type)
        batch.stopped = claim.job_id in self._stopped_jobs
        self._batches[claim.lease_id] = batch
        started = time.monotonic()
        ran = asyncio.Event()
        # The flusher is never cancelled: a report cut off mid-way could be lost.
        flusher = asyncio.create_task(self._flush_periodically(batch, ran))
        try:
            await self._run_items(batch)
        finally:
            ran.set()
            await flusher
            await self._conclude(batch)
        self._adapt_claim_size(len(claim.items), time.monotonic() - started)

    async def _run_items(self, batch: Batch) -> None:
        runners = min(self.concurrency, len(batch.claim.items))
        if batch.job_type.is_async:
            await asyncio.gather(*(self._run_async(batch) for _ in range(runners)))
        else:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._threads, self._run_sync, batch, loop)
                    for _ in range(runners)
                )
            )

    def _run_sync(self, batch: Batch, loop: asyncio.AbstractEventLoop) -> None:
        """Runs in a handler thread: start items until the batch is drained or stopped."""
        handler = batch.job_type.handler
        while (item := batch.next_item()) is not None:
            payload, ident, ctx = batch.begin(item)
            try:
                returned = handler(payload, ctx)
            except JobAborted as exc:
                batch.abort(item, ident, exc)
                loop.call_soon_threadsafe(self._stop_batches_of, batch.claim.job_id)
                return
            except BaseException as exc:  # SystemExit too: a handler thread cannot end the worker
                returned = exc
            batch.record(item, ident, returned, ctx)

    async def _run_async(self, batch: Batch) -> None:
        handler: Callable[..., Awaitable[Any]] = batch.job_type.handler
        while (item := batch.next_item()) is not None:
            payload, ident, ctx = batch.begin(item)
            async with self._item_slots:
                try:
                    returned = await handler(payload, ctx)
                except JobAborted as exc:
                    batch.abort(item, ident, exc)
                    self._stop_batches_of(batch.claim.job_id)
                    return
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # SystemExit too: it would stop the event loop
                    returned = exc
            batch.record(item, ident, returned, ctx)

    def _stop_batches_of(self, job_id: str) -> None:
        """The job stopped: start no more of its items in any batch of this worker."""
        self._stopped_jobs[job_id] = None
        while len(self._stopped_jobs) > 1000:
            del self._stopped_jobs[next(iter(self._stopped_jobs))]
        for batch in list(self._batches.values()):
            if batch.claim.job_id == job_id:
                batch.stopped = True

    async def _flush_periodically(self, batch: Batch, ran: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ran.wait(), FLUSH_SECONDS)
            if ran.is_set():
                return
            await self._flush(batch, final=False)

    async def _flush(self, batch: Batch, *, final: bool, abort: str | None = None) -> None:
        done, message = batch.take()
        if not done and message is None and not final:
            return
        outcome = await self._report(batch, done, message, final=final, abort=abort)
        if outcome is None:
            batch.stopped = True  # the lease lapses and the unreported items run again
        elif not outcome.accepted:
            log.warning(
                "lease %d of job %s lapsed or was revoked; %d results refused",
                batch.claim.lease_id,
                batch.claim.job_id,
                len(done),
            )
            batch.stopped = True
        elif outcome.status is not None and outcome.status.finished:
            self._stop_batches_of(batch.claim.job_id)  # cancelled, aborted or over threshold
            if outcome.finished:
                self._log_finished(batch.claim, outcome.status.value, outcome.status.value)

    async def _report(
        self,
        batch: Batch,
        done: list[FinishedItem],
        message: str | None,
        *,
        final: bool,
        abort: str | None,
    ) -> FinishOutcome | None:
        """Record results and the message; None if that cannot be done now.

        What a handler produced must not stop its job, even if the database refuses it: the
        results are tried again without the message, then one by one, and a result refused on
        its own is recorded as a plain failure (`UnstorableResult`) instead.
        """
        report = functools.partial(self._finish, batch, final=final, abort=abort)
        with contextlib.suppress(_Refused):
            return await report(done, message)
        if message is not None:
            with contextlib.suppress(_Refused):
                return await report(done, None)
        outcome: FinishOutcome | None = FinishOutcome(accepted=True)
        for finished in done:
            try:
                outcome = await report([finished], None)
            except _Refused:
                log.error(
                    "job %s item %d: the database refused its result; recording UnstorableResult",
                    batch.claim.job_id,
                    finished.index,
                )
                with contextlib.suppress(_Refused):
                    outcome = await report([_unstorable(batch, finished)], None)
            if outcome is None or not outcome.accepted:
                break
        return outcome

    async def _finish(
        self,
        batch: Batch,
        results: list[FinishedItem],
        message: str | None,
        *,
        final: bool,
        abort: str | None,
    ) -> FinishOutcome | None:
        """`finish_items`; None when the database cannot be reached (the lease then lapses and
        the items run again), _Refused (logged) when it refused what it was given."""
        try:
            return await self.service.finish_items(
                batch.claim.lease_id, results, message=message, final=final, abort=abort
            )
        except JoblotError as exc:
            log.warning(
                "could not report %d results of job %s: %s",
                len(results),
                batch.claim.job_id,
                exc.description,
            )
            return None
        except Exception as exc:
            log.error(
                "job %s: the database refused the results of items [%s]%s",
                batch.claim.job_id,
                _indexes(results),
                " or the message" if message is not None else "",
                exc_info=True,
            )
            raise _Refused() from exc

    async def _conclude(self, batch: Batch) -> None:
        """Report the last results (with an abort, the job fails in the same transaction) and
        hand back the items that never started.

        Never raises: the lease is released, or left to lapse so that its items run again."""
        unstarted = bool(batch.todo)
        try:
            if batch.aborted is not None:
                batch.done.extend(batch.aborted_entries)
                log.info(
                    "job %s aborted by its handler: %s",
                    batch.claim.job_id,
                    batch.aborted,
                    extra={
                        "job_id": batch.claim.job_id,
                        "job_type": batch.claim.job_type,
                        "tenant": batch.claim.tenant,
                    },
                )
            await self._flush(batch, final=not unstarted, abort=batch.aborted)
            if unstarted:
                await self.service.release_lease(batch.claim.lease_id)
        except JoblotError as exc:
            log.warning(
                "could not conclude the batch of job %s (lease %d): %s",
                batch.claim.job_id,
                batch.claim.lease_id,
                exc.description,
            )
        except Exception:
            log.exception(
                "could not conclude the batch of job %s (lease %d)",
                batch.claim.job_id,
                batch.claim.lease_id,
            )

    def _log_finished(self, claim: Claim, status: str, text: str) -> None:
        job_event(
            log,
            "finished",
            text,
            job_id=claim.job_id,
            job_type=claim.job_type,
            tenant=claim.tenant,
            status=status,
            worker=self.worker_id,
        )

    def _adapt_claim_size(self, count: int, seconds: float) -> None:
        rate = count / max(seconds, 1e-6)
        wanted = int(rate * TARGET_BATCH_SECONDS)
        grown = min(wanted, self._claim_size * 4)
        self._claim_size = max(self.concurrency, min(self.settings.batch_size, grown))

    async def _renew_leases(self) -> None:
        held = list(self._batches)
        if not held:
            return
        alive = await self.service.renew_leases(held)
        for lease_id in held:
            batch = self._batches.get(lease_id)
            if lease_id not in alive and batch is not None:
                log.warning(
                    "lease %d of job %s was lost; stopping that batch", lease_id, batch.claim.job_id
                )
                batch.stopped = True

    async def _every(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await action()
            except JoblotError as exc:
                log.warning("%s failed: %s", action.__name__, exc.description)
            except Exception:  # a helper that dies silently would stop requeues for good
                log.exception("%s failed unexpectedly", action.__name__)
            await asyncio.sleep(seconds)
