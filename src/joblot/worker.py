"""The worker: claim batches, run their handlers, report results, renew leases, stop in time.

Handlers are user code and may misbehave; each misbehaviour ends one item, never the worker,
its job or a neighbour. An item that runs past its timeout fails with `Timeout`. A sync
handler's thread cannot be killed, so a worker left with a stuck thread stops taking work,
hands back what it has not started and exits with `EXIT_REPLACE`, so that its supervisor
(`joblot serve`, systemd, Kubernetes) starts a fresh process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from joblot.app import App, Context, JobAborted
from joblot.batch import Batch, ItemTimedOut, Runner
from joblot.delivery import Deliverer
from joblot.errors import JoblotError, Unavailable
from joblot.maintenance import Maintenance
from joblot.pacing import TARGET_BATCH_SECONDS, Pacer
from joblot.reporting import Reporter, log_fields
from joblot.service import Service
from joblot.store import NO_LIMITS, Claim, TypeLimits

log = logging.getLogger("joblot.worker")

FLUSH_SECONDS = 0.1  # how often a running batch reports progress and checks its timeouts
UNAVAILABLE_PAUSE_SECONDS = 0.5  # between claims while the database cannot be reached
# An async handler is cancelled at its timeout; one that ignores the cancellation this long
# is given up like a stuck thread.
ASYNC_GRACE_SECONDS = 1.0
# A batch starts items for at most this long (twice what claims aim at), then hands back
# those it has not started: a type measured fast may turn slow (its items differ from job to
# job), and its claim must not keep its items, and other jobs, waiting.
MAX_BATCH_SECONDS = 2 * TARGET_BATCH_SECONDS
EXIT_REPLACE = 3  # exit status of a worker that stopped because a handler thread is stuck


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
        self._stopping_jobs = threading.Lock()  # handler threads note stopped jobs too
        self._pacer = Pacer(self.job_types, self.concurrency, self.settings.batch_size)
        self._reporter = Reporter(service, self.worker_id, self._stop_batches_of)
        # The cluster-wide limits of the job types this worker runs (counted in the database).
        self._limits = {t.name: t.limit for t in app if t.limit is not None}
        self._claims: dict[int, Claim] = {}  # by lease id, from the claim until its batch ends
        self._stopping = asyncio.Event()
        self._unavailable = False  # the last claim found the database unreachable
        self._batch_done = asyncio.Event()  # a batch ended: there may be room for a claim
        self._batch_ended = asyncio.Event()  # the same, for an item waiting to run alone
        self.replace = False  # it stopped itself to be replaced: a handler got stuck
        self.stuck = 0  # handler threads and tasks given up on, still running

    @property
    def exit_status(self) -> int:
        """0 after a requested stop; EXIT_REPLACE when it stopped to be replaced."""
        return EXIT_REPLACE if self.replace else 0

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; running items finish (for up to
        `stop_grace_seconds`) and are reported; items not started are handed back."""
        self._stopping.set()

    async def run(self) -> None:
        """Claim and run batches until `stop()`; then drain and hand back what never started."""
        helpers = [
            asyncio.create_task(self._every(self.settings.lease_seconds / 3, self._renew_leases)),
            asyncio.create_task(Maintenance(self.service).run()),
            asyncio.create_task(Deliverer(self.service).run()),  # beside items, never in their way
        ]
        running: set[asyncio.Task[None]] = set()
        try:
            await self._claim_loop(running)
        finally:
            await self._drain(running)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            # A stuck handler thread never returns: waiting for it would never end.
            self._threads.shutdown(wait=self.stuck == 0, cancel_futures=True)

    async def _drain(self, running: set[asyncio.Task[None]]) -> None:
        """Let running items finish for up to `stop_grace_seconds`, then give up on them: their
        batches conclude and hand them back to the queue with the items never started."""
        for batch in self._batches.values():
            batch.stopped = True
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=self.settings.stop_grace_seconds)
        if not late:
            return
        for batch in list(self._batches.values()):
            given_up = batch.abandon_running()
            if given_up:
                self.stuck += len(given_up)
                log.warning(
                    "stopping: items %s of job %s still running after %g s go back to the queue",
                    ", ".join(str(item.index) for item in given_up),
                    batch.claim.job_id,
                    self.settings.stop_grace_seconds,
                    extra=log_fields(batch),
                )
        await asyncio.wait(late)

    async def _claim_loop(self, running: set[asyncio.Task[None]]) -> None:
        in_flight = asyncio.Semaphore(2)  # one batch runs while the next is claimed/reported
        while not self._stopping.is_set():
            await in_flight.acquire()
            await self._room_for_claim()
            if self._stopping.is_set():
                break
            self._batch_done.clear()
            claim = await self._claim()
            if claim is None:
                in_flight.release()
                await self._idle()
                continue
            self._claims[claim.lease_id] = claim
            task = asyncio.create_task(self._run_batch(claim))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: in_flight.release())

    async def _room_for_claim(self) -> None:
        """Wait until the next claim could start at once: a thread is free, or every batch in
        flight is expected to end soon. Items claimed behind slow ones would wait for them, and
        so would their job, while another worker could have run them."""
        while self._claims and not self._stopping.is_set():
            self._batch_done.clear()
            if any(self._alone(claim) for claim in self._claims.values()):
                pass  # an item on its last attempt runs with nothing beside it
            elif self._free_slots() > 0 or all(
                self._pacer.quick(claim.job_type, len(claim.items), claim.slots)
                for claim in self._claims.values()
            ):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._batch_done.wait(), FLUSH_SECONDS)

    def _alone(self, claim: Claim) -> bool:
        """Whether the claim is an item on its last attempt (the store leases those alone):
        it runs with nothing else in this process, so that if it kills the process again, it
        alone fails with WorkerLost."""
        last = max(2, self.settings.max_attempts)
        return len(claim.items) == 1 and claim.items[0].attempt >= last

    async def _clear_the_way(self, claim: Claim) -> None:
        """Before an item on its last attempt starts, let the other batches end."""
        log.info(
            "job %s item %d is on its last attempt (its worker vanished %d times): running it "
            "alone",
            claim.job_id,
            claim.items[0].index,
            claim.items[0].attempt - 1,
            extra={"job_id": claim.job_id, "job_type": claim.job_type, "tenant": claim.tenant},
        )
        while True:
            self._batch_ended.clear()
            if all(lease_id == claim.lease_id for lease_id in self._claims):
                return
            await self._batch_ended.wait()

    def _free_slots(self) -> int:
        """Items this worker could start now beside those it holds (running or to start); a
        batch of a type with a `concurrency` limit occupies no more than its slots."""
        return self.concurrency - sum(self._held(claim) for claim in self._claims.values())

    def _held(self, claim: Claim) -> int:
        """How many items of a claim are running or still to start, at most its slots."""
        batch = self._batches.get(claim.lease_id)
        left = batch.leftover if batch is not None else len(claim.items)
        return left if claim.slots is None else min(left, claim.slots)

    async def _idle(self) -> None:
        """Wait for work, a stop request, or the poll interval, whichever comes first (on
        PostgreSQL, while listening: a NOTIFY, or a poll every second in case one was lost)."""
        waits = [
            asyncio.create_task(self._stopping.wait()),
            asyncio.create_task(self.service.wait_for_work(self.settings.idle_poll_seconds)),
            # A batch that ends frees room a limited job type may be waiting for.
            asyncio.create_task(self._batch_done.wait()),
        ]
        try:  # the store's wait returns by itself: on PostgreSQL at a NOTIFY or a slow poll
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _type_limits(self) -> TypeLimits:
        """The limits of this worker's job types, and how many items it can start now: a claim
        of a limited type takes no more, so what its limit counts is really running."""
        if not self._limits:
            return NO_LIMITS
        # Its own leases it counts itself: their finished items are not reported yet.
        own = {
            lease_id: (claim.job_type, self._held(claim))
            for lease_id, claim in self._claims.items()
            if claim.slots is not None
        }
        return TypeLimits(self._limits, max(0, self._free_slots()), self.concurrency, own)

    async def _claim(self) -> Claim | None:
        try:
            claim = await self.service.claim_items(
                self.worker_id,
                self.job_types,
                self._pacer.first_size,
                limits=self._type_limits(),
                paces=self._pacer.paces(),
            )
        except Unavailable as exc:  # said once, not at every poll: the store answers at once
            if not self._unavailable:
                log.warning(
                    "cannot claim, retrying until the database is back: %s", exc.description
                )
                self._unavailable = True
            await asyncio.sleep(UNAVAILABLE_PAUSE_SECONDS)
            return None
        except JoblotError as exc:
            log.warning("claim failed, retrying: %s", exc.description)
            return None
        except Exception:
            log.exception("claim failed unexpectedly, retrying")
            return None
        if self._unavailable:
            log.warning("claims work again")
            self._unavailable = False
        return claim

    # -- one batch ------------------------------------------------------------------------------

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
            self._claims.pop(claim.lease_id, None)
            self._batch_done.set()
            self._batch_ended.set()

    async def _run_claim(self, claim: Claim) -> None:
        job_type = self.app.get(claim.job_type)
        assert job_type is not None  # only registered types are claimed
        timeout = job_type.timeout or self.settings.item_timeout_seconds
        batch = Batch(claim, job_type, timeout)
        self._batches[claim.lease_id] = batch  # from here on its lease is renewed
        # Looked at after the batch is registered: a handler thread that aborts the job now
        # either finds this batch registered or has already noted the job as stopped.
        if claim.job_id in self._stopped_jobs:
            batch.stopped = True
        if self._alone(claim):
            await self._clear_the_way(claim)
        try:
            await self._drive(batch, self._start_runners(batch))
            # Its handlers are done: the next claim need not wait for the last report (a
            # limited type's included: this worker counts its own leases, TypeLimits.own).
            self._batch_done.set()
        finally:
            await self._reporter.conclude(batch)
        self._pacer.measured(claim.job_type, batch.busy_items, batch.busy_seconds)

    def _start_runners(self, batch: Batch) -> dict[asyncio.Future[None], Runner]:
        """Up to `concurrency` runners (no more than the claim's slots of its type's limit),
        each taking the batch's items one after another: threads for a sync handler, tasks on
        this loop for an async one."""
        loop = asyncio.get_running_loop()
        batch.hand_back_at = time.monotonic() + MAX_BATCH_SECONDS
        runners: dict[asyncio.Future[None], Runner] = {}
        count = min(self.concurrency, len(batch.claim.items))
        if batch.claim.slots is not None:
            count = min(count, batch.claim.slots)
        for _ in range(count):
            runner = batch.runner()
            if batch.job_type.is_async:
                future: asyncio.Future[None] = loop.create_task(self._run_async(batch, runner))
            else:
                future = loop.run_in_executor(self._threads, self._run_sync, batch, runner)
            future.add_done_callback(functools.partial(_log_failure, batch))
            runners[future] = runner
        return runners

    async def _drive(self, batch: Batch, runners: dict[asyncio.Future[None], Runner]) -> None:
        """Wait for the batch's runners, reporting every FLUSH_SECONDS and failing items that
        run past their timeout; a runner given up on is not waited for."""
        pending = set(runners)
        while True:
            pending = {f for f in pending if not runners[f].abandoned}
            if not pending or (batch.stopped and not batch.running()):
                return  # runners still queued will find the batch stopped and start nothing
            _, pending = await asyncio.wait(pending, timeout=FLUSH_SECONDS)
            if pending:
                self._expire(batch)
                await self._reporter.flush(batch, final=False)

    def _expire(self, batch: Batch) -> None:
        """Fail the batch's items that ran past their timeout; their handlers cannot be
        stopped, so this worker makes way for a fresh process."""
        grace = ASYNC_GRACE_SECONDS if batch.job_type.is_async else 0.0
        late = batch.overdue(time.monotonic(), grace)
        if not late:
            return
        self.stuck += len(late)
        log.error(
            "job %s: items %s ran past the timeout of %g s and failed with Timeout; their "
            "handler %s cannot be stopped, so this worker stops taking work to be replaced",
            batch.claim.job_id,
            ", ".join(str(item.index) for item in late),
            batch.timeout,
            "ignored its cancellation and" if batch.job_type.is_async else "thread",
            extra=log_fields(batch),
        )
        self.replace = True
        self.stop()

    def _run_sync(self, batch: Batch, runner: Runner) -> None:
        """Runs in a handler thread: start items until the batch is drained or stopped."""
        handler = batch.job_type.handler
        while (started := batch.start(runner)) is not None:
            payload, ctx = started
            try:
                returned = handler(payload, ctx)
            except BaseException as exc:  # SystemExit too: a handler thread cannot end the worker
                returned = exc
            if not batch.record(runner, returned, ctx):
                return  # given up on: the item already failed with Timeout
            if isinstance(returned, JobAborted):  # at once: the loop may be busy for a while
                self._stop_batches_of(batch.claim.job_id)

    async def _run_async(self, batch: Batch, runner: Runner) -> None:
        """Runs on the loop: start items until the batch is drained or stopped, at most
        `concurrency` at once across batches, each cancelled at its timeout."""
        handler: Callable[..., Awaitable[Any]] = batch.job_type.handler
        while True:
            async with self._item_slots:
                started = batch.start(runner)
                if started is None:
                    return
                payload, ctx = started
                returned = await _call_async(handler, payload, ctx, batch.timeout)
            if not batch.record(runner, returned, ctx):
                return
            if isinstance(returned, JobAborted):
                self._stop_batches_of(batch.claim.job_id)

    def _stop_batches_of(self, job_id: str) -> None:
        """The job stopped: start no more of its items in any batch of this worker. Called on
        the loop and from handler threads (a sync handler that aborted its job)."""
        with self._stopping_jobs:
            self._stopped_jobs[job_id] = None
            while len(self._stopped_jobs) > 1000:
                del self._stopped_jobs[next(iter(self._stopped_jobs))]
        for batch in list(self._batches.values()):
            if batch.claim.job_id == job_id:
                batch.stopped = True

    # -- leases ---------------------------------------------------------------------------------

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


async def _call_async(
    handler: Callable[..., Awaitable[Any]], payload: dict[str, Any], ctx: Context, timeout: float
) -> Any:
    """What an async handler returned or raised, cancelled after `timeout` seconds."""
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await handler(payload, ctx)
    except asyncio.CancelledError:
        raise  # the worker itself is being cancelled
    except BaseException as exc:  # SystemExit too: it would stop the event loop
        return ItemTimedOut() if scope.expired() else exc


def _log_failure(batch: Batch, future: asyncio.Future[None]) -> None:
    """A runner must not fail; if one does, say so (and never leave its exception unread)."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("a runner of job %s failed", batch.claim.job_id, exc_info=exc)
