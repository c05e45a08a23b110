"""JobStatus, result entries, the status enum and its allowed transitions."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer

DEFAULT_TENANT = "default"  # owns the jobs submitted while the server runs without tokens
MAX_PAGE_SIZE = 100  # entries in one page of a cursor-paginated listing
MAX_SHOW_MANY = 100  # ids in one show_many request
MAX_JOB_TYPE_LENGTH = 200
API_PREFIX = "/api/v2"
# Upper bounds (seconds) of the buckets of the joblot_job_duration_seconds histogram, from a
# job's creation to its end. Fixed: the counts of purged jobs are kept per bucket.
JOB_DURATION_BUCKETS = (
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
    86400.0,
)


class Status(StrEnum):
    """The four states of a job, exactly as Zendesk names them."""

    QUEUED = "queued"
    WORKING = "working"
    FAILED = "failed"
    COMPLETED = "completed"

    @property
    def finished(self) -> bool:
        """True once the job can no longer change state."""
        return self in (Status.FAILED, Status.COMPLETED)


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.WORKING, Status.FAILED}),
    Status.WORKING: frozenset({Status.COMPLETED, Status.FAILED}),
    Status.FAILED: frozenset(),
    Status.COMPLETED: frozenset(),
}


def can_transition(old: Status, new: Status) -> bool:
    """Whether the lifecycle allows a job to move from `old` to `new`."""
    return new in TRANSITIONS[old]


def check_transition(old: Status, new: Status) -> None:
    """Raise ValueError unless a job may stay at `old` or move from it to `new`.

    Every state the rules below produce is checked here before it is saved, so a rule that
    broke the lifecycle would fail loudly instead of writing a job that changes its mind.
    """
    if new is not old and not can_transition(old, new):
        raise ValueError(f"a job cannot go from {old.value} to {new.value}")


class JobStatus(BaseModel):
    """Zendesk's JobStatus: always these eight keys, in this order, nulls written out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    job_type: str
    url: str
    total: int | None
    progress: int | None
    status: Status
    message: str | None
    results: list[dict[str, Any]] | None

    @property
    def finished(self) -> bool:
        """True once the job is `completed` or `failed`."""
        return self.status.finished


class JobStats(BaseModel):
    """What a JobStatus leaves out, sent beside it as `job_stats`: how many items failed and
    when the job was created, first claimed, last changed and finished (UTC)."""

    model_config = ConfigDict(frozen=True)

    failures: int
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

    @field_serializer("created_at", "started_at", "updated_at", "finished_at")
    def _as_rfc3339(self, value: datetime | None) -> str | None:
        """Written back as the server writes them: RFC 3339 UTC with milliseconds."""
        return None if value is None else rfc3339(value.timestamp())


class JobReport(BaseModel):
    """A JobStatus with its `job_stats`, as one status body carries them; `job_stats` is None
    from a server that sends none (Zendesk)."""

    model_config = ConfigDict(frozen=True)

    job_status: JobStatus
    job_stats: JobStats | None = None


def rfc3339(t: float) -> str:
    """A Unix time as RFC 3339 UTC with milliseconds: `2026-11-28T18:07:59.123Z`."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_url(base: str, job_id: str) -> str:
    """The url a client polls: `{public_url}/api/v2/job_statuses/{id}.json`."""
    return f"{base.rstrip('/')}{API_PREFIX}/job_statuses/{job_id}.json"


class ResultEntry(BaseModel):
    """One per-item result; parses as Zendesk's Create/Update/FailedResult."""

    model_config = ConfigDict(frozen=True, extra="allow")

    index: int
    success: bool
    id: Any = None
    action: str | None = None
    error: str | None = None
    details: str | None = None


def success_entry(
    index: int, item: dict[str, Any], action: str | None, returned: dict[str, Any]
) -> dict[str, Any]:
    """The result entry of an item whose handler returned `returned`."""
    entry: dict[str, Any] = {"index": index}
    if "id" in item:
        entry["id"] = item["id"]
    if action is not None:
        entry["action"] = action
    entry.update(returned)
    # index, success and the declared action are the service's to say, not the handler's;
    # error and details, if a handler returns them, must read as Zendesk's text fields
    entry["index"] = index
    entry["success"] = True
    if action is not None:
        entry["action"] = action
    elif "action" in entry and not isinstance(entry["action"], str | None):
        entry["action"] = str(entry["action"])
    for key in ("error", "details"):
        if key in entry and not isinstance(entry[key], str | None):
            entry[key] = str(entry[key])
    return entry


def failure_entry(
    index: int,
    item: dict[str, Any],
    action: str | None,
    error: str,
    details: str,
    *,
    attempts: int = 1,
) -> dict[str, Any]:
    """The result entry of an item that failed with `error` (a name) and `details`; one that
    was retried says how many `attempts` its handler had."""
    entry: dict[str, Any] = {"index": index}
    if "id" in item:
        entry["id"] = item["id"]
    if action is not None:
        entry["action"] = action
    entry.update(success=False, error=error, details=details)
    if attempts > 1:
        entry["attempts"] = attempts
    return entry


def new_job_id(now: float | None = None) -> str:
    """A UUIDv7 as 32 hex characters: opaque, URL-safe and ordered by creation time."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = (rand >> 62) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return f"{value:032x}"


def completion_message(now: float) -> str:
    """The message of a job that completed at `now`: `Completed at YYYY-MM-DD HH:MM:SS +0000`."""
    return datetime.fromtimestamp(now, UTC).strftime("Completed at %Y-%m-%d %H:%M:%S +0000")


def cancel_message(skipped: int, total: int) -> str:
    """The message of a cancelled job, saying how many items never ran."""
    return f"Cancelled: {skipped} of {total} items were skipped"


@dataclass(frozen=True)
class JobState:
    """The counters and state of a job that the lifecycle rules read and change."""

    status: Status
    total: int
    progress: int
    failures: int
    pending: int
    message: str | None
    message_set: bool  # a handler set the message, so completion keeps it
    max_failures: int | None
    skipped: int = 0  # items that will never run because the job stopped
    cancelled: bool = False


RATE_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
PERIOD_NAMES = {1.0: "second", 60.0: "minute", 3600.0: "hour"}


@dataclass(frozen=True)
class Limit:
    """A job type's limits across the whole cluster: at most `concurrency` of its items run at
    once, and at most `rate` of them start in any `per` seconds."""

    concurrency: int | None = None
    rate: int | None = None
    per: float = 1.0


def parse_rate(text: str) -> tuple[int, float]:
    """`"100/m"` → (100, 60.0): R starts per second (`s`), minute (`m`) or hour (`h`)."""
    count, _, unit = text.strip().partition("/")
    if not count.isdigit() or int(count) < 1 or unit not in RATE_PERIODS:
        raise ValueError(f"a rate is R/s, R/m or R/h with R a whole number above 0, not {text!r}")
    return int(count), RATE_PERIODS[unit]


def concurrency_text(job_type: str, concurrency: int) -> str:
    """The message of a job held back by its type's concurrency limit."""
    return f"Throttled: at most {concurrency} {job_type} items run at once"


def rate_text(job_type: str, limit: Limit) -> str:
    """The message of a job held back by its type's rate limit."""
    period = PERIOD_NAMES.get(limit.per, f"{limit.per:g} s")
    return f"Throttled: at most {limit.rate} {job_type} items start per {period}"


def after_throttle(state: JobState, text: str) -> JobState:
    """Items of the job wait on their type's limit: the message says so, unless the job has
    finished or a handler reported a message of its own (that one stays)."""
    if state.status.finished or state.message_set or state.message == text:
        return state
    return replace(state, message=text)


def after_claim(state: JobState, claimed: int) -> JobState:
    """A worker leased `claimed` items: the job is working."""
    status = Status.WORKING if state.status is Status.QUEUED else state.status
    return replace(state, status=status, pending=state.pending - claimed)


def after_finish(
    state: JobState, done: int, failed: int, message: str | None, now: float
) -> JobState:
    """`done` items finished (`failed` of them unsuccessfully): count them, maybe finish the job.

    A handler's `message` is kept while the job runs; once it has stopped, its message says
    why (cancelled, aborted, too many failures) and late results no longer change it.
    """
    progress, failures = state.progress + done, state.failures + failed
    new = replace(state, progress=progress, failures=failures)
    if state.status.finished:
        return new
    if message is not None:
        new = replace(new, message=message, message_set=True)
    if state.max_failures is not None and failures > state.max_failures:
        text = f"Failed: {failures} items failed, more than the {state.max_failures} allowed"
        return replace(new, status=Status.FAILED, pending=0, skipped=state.pending, message=text)
    if progress >= state.total:
        final = new.message if new.message_set else completion_message(now)
        return replace(new, status=Status.COMPLETED, message=final)
    return new


def after_requeue(state: JobState, requeued: int) -> JobState:
    """Items whose worker vanished or handed them back unstarted return to the queue.

    Once the job has stopped they never run: they are skipped, and a cancelled job's
    message keeps the count up to date.
    """
    if not state.status.finished:
        return replace(state, pending=state.pending + requeued)
    skipped = state.skipped + requeued
    message = cancel_message(skipped, state.total) if state.cancelled else state.message
    return replace(state, skipped=skipped, message=message)


def after_stop(state: JobState, message: str | None) -> JobState:
    """The job stops as a whole: cancelled (message None) or aborted with `message`.

    Items not yet claimed are skipped; items already running may still report results.
    """
    cancelled = message is None
    text = cancel_message(state.pending, state.total) if cancelled else message
    return replace(
        state,
        status=Status.FAILED,
        pending=0,
        skipped=state.pending,
        message=text,
        cancelled=cancelled,
    )


def stopped(state: JobState, abort: str | None) -> JobState:
    """`state` after a handler aborted the job with message `abort` (None: it did not); a job
    that already finished stays as it is."""
    if abort is None or state.status.finished:
        return state
    return after_stop(state, abort)
