"""One claimed batch while a worker runs it: which item each runner is on and since when, the
results not yet reported, and the result entry of whatever a handler did."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from joblot import codec
from joblot.app import Context, ItemFailed, JobAborted, JobType
from joblot.models import failure_entry, success_entry
from joblot.store import Claim, ClaimedItem, FinishedItem, RetryLater


def to_result(
    job_type: JobType, index: int, ident: dict[str, Any], returned: Any, attempts: int = 1
) -> FinishedItem:
    """Turn what a handler returned (or raised, as `returned`) into a result entry.

    `ident` holds the item's `id`, taken before the handler ran (handlers may change items).
    Whatever the handler did, this returns an entry: a result that cannot be stored fails
    its item with `InvalidResult` instead of the worker, and text that a database cannot hold
    is made storable (see `joblot.codec`).
    """
    if isinstance(returned, BaseException):
        return failure(job_type, index, ident, *_describe(returned), attempts=attempts)
    if returned is None:
        returned = {}
    if not isinstance(returned, dict):
        kind = type(returned).__name__
        details = f"the handler returned {kind}; it must return a dict or None"
        return failure(job_type, index, ident, "InvalidResult", details)
    try:
        entry = success_entry(index, ident, job_type.action, returned)
        return FinishedItem(index, True, codec.dumps_storable(entry))
    except Exception as exc:  # not JSON, or a value whose str() raises
        details = f"the handler's result is not JSON-serializable: {safe_str(exc)}"
        return failure(job_type, index, ident, "InvalidResult", details)


def failure(
    job_type: JobType,
    index: int,
    ident: dict[str, Any],
    error: str,
    details: str,
    *,
    attempts: int = 1,
) -> FinishedItem:
    """A failed result entry, its text made storable."""
    error, details = codec.without_surrogates(error), codec.without_surrogates(details)
    entry = failure_entry(index, ident, job_type.action, error, details, attempts=attempts)
    return FinishedItem(index, False, codec.dumps(entry))


def ident_of(item: dict[str, Any]) -> dict[str, Any]:
    """What a result entry keeps of its item: the `id`, if it has one."""
    return {"id": item["id"]} if "id" in item else {}


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, ItemFailed):
        return safe_str(exc.error), safe_str(exc.details)
    return type(exc).__name__, safe_str(exc) or type(exc).__name__


def safe_str(value: object) -> str:
    """str(value), or a plain stand-in when its __str__ raises (handlers' objects may)."""
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be shown as text>"


class ItemTimedOut(Exception):
    """What an item's handler "returned" when it ran past its timeout and was cancelled."""


class Runner:
    """One runner of a batch (a handler thread or task): the item it runs and since when.

    A runner whose item ran past its timeout is `abandoned`: the item is recorded as a
    `Timeout` and whatever the handler still does is ignored."""

    __slots__ = ("abandoned", "deadline", "ident", "item", "started")

    def __init__(self) -> None:
        self.item: ClaimedItem | None = None
        self.ident: dict[str, Any] = {}
        self.started = 0.0
        self.deadline = float("inf")
        self.abandoned = False


class Batch:
    """One claimed batch while it runs: items still to start, results not yet reported.

    Runners (threads or tasks) call `start` and `record`; the event loop calls `overdue`,
    `take` and `abort`-related reads. One lock keeps them apart.
    """

    def __init__(
        self,
        claim: Claim,
        job_type: JobType,
        timeout: float,
        on_drained: Callable[[], None] = lambda: None,
    ) -> None:
        self.claim = claim
        self.job_type = job_type
        self.timeout = timeout  # seconds an item may run
        self.todo: deque[ClaimedItem] = deque(claim.items)
        self.done: list[FinishedItem] = []
        self.later: list[RetryLater] = []  # items to retry after a delay, not yet reported
        self.message: str | None = None
        self.aborted: str | None = None  # the reason of the first item that aborted the job
        self.aborted_entries: list[FinishedItem] = []  # reported together with the abort
        self.stopped = False  # no new item starts once set
        self.hand_back_at = float("inf")  # nor after this (time.monotonic()): see the worker
        self.runners: list[Runner] = []
        self.accounted = 0  # items with a result (recorded, timed out or aborted)
        self.busy_seconds = 0.0  # handler time of the items recorded, for the claim size
        self.busy_items = 0  # the items recorded, for the same
        self.lock = threading.Lock()
        self._on_drained = on_drained  # called once, when no item is left to start

    @property
    def leftover(self) -> int:
        """Items of the claim without a result: unstarted, or abandoned while running."""
        return len(self.claim.items) - self.accounted

    def runner(self) -> Runner:
        """A new runner slot for this batch."""
        runner = Runner()
        self.runners.append(runner)
        return runner

    def start(self, runner: Runner) -> tuple[dict[str, Any], Context] | None:
        """Start the next item on `runner`: what its handler gets, or None when the batch is
        drained or stopped (or the runner was abandoned)."""
        with self.lock:
            if self.stopped or runner.abandoned or not self.todo:
                return None
            if time.monotonic() > self.hand_back_at:
                return None  # the rest goes back to the queue
            item = self.todo.popleft()
            runner.item = item
            runner.started = time.monotonic()
            runner.deadline = runner.started + self.timeout
            drained = not self.todo
        if drained:
            self._on_drained()
        payload = codec.decode_item(item.payload)
        runner.ident = ident_of(payload)
        attempt = item.attempt + item.retries  # the handler's tries, whatever ended them
        ctx = Context(self.claim.job_id, self.job_type.name, item.index, attempt)
        return payload, ctx

    def record(self, runner: Runner, returned: Any, ctx: Context) -> bool:
        """Keep the result of the runner's item (and its handler's message) until the next
        flush; False if the runner was abandoned meanwhile (its item already timed out)."""
        item = runner.item
        assert item is not None
        if isinstance(returned, JobAborted):
            return self._abort(runner, item, returned)
        later: RetryLater | None = None
        if isinstance(returned, ItemTimedOut):
            result = self.timed_out(item, runner.ident)
        elif isinstance(returned, BaseException) and self.job_type.retried(returned, item.retries):
            later = RetryLater(item.index, self.job_type.retry_delay(item.retries))
        else:
            attempts = item.retries + 1
            result = to_result(self.job_type, item.index, runner.ident, returned, attempts)
        with self.lock:
            if runner.abandoned:
                return False
            self.busy_seconds += time.monotonic() - runner.started
            self.busy_items += 1
            self.accounted += 1
            runner.item = None
            if later is None:
                self.done.append(result)
            else:
                self.later.append(later)
            if ctx.reported is not None:
                self.message = ctx.reported
        return True

    def _abort(self, runner: Runner, item: ClaimedItem, exc: JobAborted) -> bool:
        """The item's handler aborted the whole job: keep its `Aborted` entry for the report
        that stops the job, and start no more items."""
        reason = safe_str(exc.message)
        entry = failure(self.job_type, item.index, runner.ident, "Aborted", reason)
        with self.lock:
            if runner.abandoned:
                return False
            self.accounted += 1
            runner.item = None
            self.aborted_entries.append(entry)
            if self.aborted is None:
                self.aborted = reason
            self.stopped = True
        return True

    def overdue(self, now: float, grace: float) -> list[ClaimedItem]:
        """Items running more than `grace` seconds past their timeout: each is recorded as
        failed with `Timeout` and its runner abandoned (its thread or task cannot be stopped)."""
        late = []
        with self.lock:
            for runner in self.runners:
                item = runner.item
                if item is None or runner.abandoned or now < runner.deadline + grace:
                    continue
                runner.abandoned = True
                runner.item = None
                self.accounted += 1
                self.done.append(self.timed_out(item, runner.ident))
                late.append(item)
        return late

    def timed_out(self, item: ClaimedItem, ident: dict[str, Any]) -> FinishedItem:
        """The result of an item that ran past the timeout."""
        details = f"the handler ran longer than the job type's timeout of {self.timeout:g} s"
        return failure(self.job_type, item.index, ident, "Timeout", details)

    def abandon_running(self) -> list[ClaimedItem]:
        """Give up on every item still running (the worker is stopping and cannot wait any
        longer): they get no result here and go back to the queue with the lease."""
        given_up = []
        with self.lock:
            self.stopped = True
            for runner in self.runners:
                if runner.item is not None and not runner.abandoned:
                    given_up.append(runner.item)
                    runner.abandoned = True
                    runner.item = None
        return given_up

    def running(self) -> bool:
        """Whether any runner is in the middle of an item."""
        with self.lock:
            return any(r.item is not None and not r.abandoned for r in self.runners)

    def take(self) -> tuple[list[FinishedItem], str | None, list[RetryLater]]:
        """The results, message and items to retry gathered since the last flush."""
        with self.lock:
            done, self.done = self.done, []
            message, self.message = self.message, None
            later, self.later = self.later, []
        return done, message, later

    def take_aborted(self) -> list[FinishedItem]:
        """The entries of the items that aborted the job, to report with the abort."""
        with self.lock:
            entries, self.aborted_entries = self.aborted_entries, []
        return entries
