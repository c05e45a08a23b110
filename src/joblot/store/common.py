"""What both backends share: row and parameter shapes, listing keys, pages, and error texts."""

from __future__ import annotations

from typing import Any, TypeVar

from joblot import codec
from joblot.errors import IdempotencyKeyReused, JobFinished, TooManyJobs
from joblot.models import (
    JOB_DURATION_BUCKETS,
    JobState,
    Status,
    check_transition,
    failure_entry,
    new_job_id,
)
from joblot.store import (
    AttemptOutcome,
    AttemptRow,
    DeliveryRow,
    DueDelivery,
    FinishedItem,
    JobCounts,
    JobFilter,
    JobRow,
    LapsedLease,
    MetricCounts,
    MetricTotal,
    NewJob,
)

T = TypeVar("T")
K = TypeVar("K")


class Refused(Exception):
    """Rolls back a transaction whose lease is no longer held as it must be."""


# -- listing order ------------------------------------------------------------------------------

_KEY_BASE = 10**16  # microseconds; inverted so that newer sorts first, good until year 2286


def _inverted_micros(t: float) -> str:
    return f"{_KEY_BASE - int(t * 1_000_000):016d}"


def unfinished_list_key(created_at: float, job_id: str) -> str:
    """Listing key of an unfinished job: these come first, newest first."""
    return f"0{_inverted_micros(created_at)}{job_id}"


def finished_prefix(finished_at: float) -> str:
    """Prefix that replaces the leading `0` of a key once a job finishes at `finished_at`."""
    return f"1{_inverted_micros(finished_at)}"


def filter_params(where: JobFilter) -> dict[str, Any]:
    """The parameters of a filtered `list_jobs` query: the statuses asked for, and the range of
    listing keys they can have. Unfinished jobs' keys start with `0` and finished ones' with
    `1`, so asking only for unfinished (or only for finished) jobs reads just that part of the
    tenant's listing index."""
    statuses = set(Status) if where.statuses is None else set(where.statuses)
    low = "" if any(not s.finished for s in statuses) else "1"
    high = "2" if any(s.finished for s in statuses) else "1"
    return {
        "statuses": sorted(s.value for s in statuses),
        "job_type": where.job_type,
        "low": low,
        "high": high,
    }


def results_operation(*, success: bool | None) -> str:
    """The named `list_results` query for every entry, only the failed or only the succeeded."""
    if success is None:
        return "list_results"
    return "list_results_succeeded" if success else "list_results_failed"


def list_operation(where: JobFilter) -> str:
    """The named `list_jobs` query for a filter: by job type, through that type's index."""
    return "list_jobs" if where.job_type is None else "list_jobs_of_type"


# -- rows and parameters ------------------------------------------------------------------------


def job_params(job: NewJob) -> dict[str, Any]:
    """The parameters of `submit_job.insert_job` for `job`."""
    return {
        "id": job.id,
        "tenant": job.tenant,
        "job_type": job.job_type,
        "action": job.action,
        "total": len(job.payloads),
        "max_failures": job.max_failures,
        "idempotency_key": job.idempotency_key,
        "request_hash": job.request_hash,
        "created_at": job.created_at,
        "list_key": unfinished_list_key(job.created_at, job.id),
        "callback_url": job.callback_url,
        "public_url": job.public_url,
        "message": job.message,
    }


def queued_row(job: NewJob) -> JobRow:
    """The row of `job` as it was just inserted."""
    return JobRow(
        id=job.id,
        job_type=job.job_type,
        status=Status.QUEUED,
        total=len(job.payloads),
        progress=0,
        message=job.message,
        version=1,
        results=None,
        list_key=unfinished_list_key(job.created_at, job.id),
        failures=0,
        created_at=job.created_at,
        started_at=None,
        updated_at=job.created_at,
        finished_at=None,
    )


JOB_COLUMNS = 13  # the columns of `get_job.select` that make a JobRow (inline results follow)


def job_row(row: tuple[Any, ...], results: list[bytes] | None) -> JobRow:
    """A JobRow from the first `JOB_COLUMNS` columns of `get_job.select` and its inline
    results."""
    id_, job_type, status, total, progress, message, version, list_key = row[:8]
    failures, created_at, started_at, updated_at, finished_at = row[8:JOB_COLUMNS]
    return JobRow(
        id=id_,
        job_type=job_type,
        status=Status(status),
        total=total,
        progress=progress,
        message=message,
        version=version,
        results=results,
        list_key=list_key,
        failures=failures,
        created_at=created_at,
        started_at=started_at,
        updated_at=updated_at,
        finished_at=finished_at,
    )


def state_from_row(row: tuple[Any, ...]) -> JobState:
    """A JobState from the columns of `job_state.select` (flags as booleans or 0/1)."""
    status, total, progress, failures, pending, message, message_set, max_failures = row[:8]
    skipped, cancelled = row[8:]
    return JobState(
        status=Status(status),
        total=total,
        progress=progress,
        failures=failures,
        pending=pending,
        message=message,
        message_set=bool(message_set),
        max_failures=max_failures,
        skipped=skipped,
        cancelled=bool(cancelled),
    )


def state_params(
    job_id: str,
    old: JobState,
    new: JobState,
    *,
    now: float,
    retention: float,
    claimed_at: float | None = None,
    turn: float | None = None,
) -> dict[str, Any]:
    """The parameters of `job_state.save`: what the rules decided, and whether the change is
    visible (bumping the version, hence the ETag, and stamping `updated_at`) and finishes the
    job (stamping its purge time and its place among finished jobs). A claim passes when it
    happened (`claimed_at`) and when the job's next turn comes (`turn`, default the same)."""
    check_transition(old.status, new.status)
    visible = (new.status, new.progress, new.message) != (old.status, old.progress, old.message)
    return {
        "id": job_id,
        "status": new.status.value,
        "progress": new.progress,
        "failures": new.failures,
        "pending": new.pending,
        "message": new.message,
        "message_set": new.message_set,
        "skipped": new.skipped,
        "cancelled": new.cancelled,
        "bump": int(visible),
        "visible": visible,
        "claimed_at": claimed_at,
        "turn": claimed_at if turn is None else turn,
        "finished": new.status.finished and not old.status.finished,
        "now": now,
        "retention": retention,
        "finished_prefix": finished_prefix(now),
    }


# -- webhook deliveries -------------------------------------------------------------------------

# What an attempt says when the process sending it stopped before it got an answer.
LOST_ATTEMPT = "no answer recorded: the process sending this attempt stopped; sent again"


def enqueue_params(job_id: str, new: JobState, now: float) -> dict[str, Any]:
    """The parameters of `deliveries.enqueue`: the event of a job that just finished, with
    its webhook-id (`msg_` and a time-ordered id)."""
    kind = "job.completed" if new.status is Status.COMPLETED else "job.failed"
    return {"id": job_id, "delivery_id": f"msg_{new_job_id(now)}", "type": kind, "now": now}


def due_delivery(row: tuple[Any, ...]) -> DueDelivery:
    """A DueDelivery from the columns `deliveries.claim` returns."""
    id_, job_id, tenant, job_type, url, kind, public_url, created_at = row[:8]
    attempts, round_start, lease_token, body = row[8:]
    return DueDelivery(
        id=id_,
        job_id=job_id,
        tenant=tenant,
        job_type=job_type,
        url=url,
        type=kind,
        public_url=public_url,
        created_at=created_at,
        attempt=attempts,
        round_attempt=attempts - round_start,
        lease_token=lease_token,
        body=None if body is None else bytes(body),
    )


# How an attempt ended, as `joblot_webhook_deliveries_total{outcome}` counts it.
ATTEMPT_OUTCOMES = {"delivered": "success", "pending": "failure", "failed": "given_up"}


def attempt_total(outcome: AttemptOutcome) -> MetricTotal:
    """The metric_totals row that counts one attempt, by how it ended."""
    return MetricTotal("webhook_deliveries", "", ATTEMPT_OUTCOMES[outcome.state], 1.0)


def outcome_params(outcome: AttemptOutcome, now: float) -> dict[str, Any]:
    """The parameters of `deliveries.finish_attempt` and `deliveries.finish`."""
    return {
        "id": outcome.delivery_id,
        "n": outcome.attempt,
        "lease_token": outcome.lease_token,
        "status_code": outcome.status_code,
        "error": outcome.error,
        "state": outcome.state,
        "next_attempt_at": outcome.next_attempt_at,
        "now": now,
    }


def delivery_rows(deliveries: list[Any], attempts: list[Any]) -> list[DeliveryRow]:
    """Deliveries (`id, type, state, next_attempt_at`) with their attempts
    (`delivery_id, at, status_code, error`, in order)."""
    by_delivery: dict[str, list[AttemptRow]] = {}
    for delivery_id, at, status_code, error in attempts:
        by_delivery.setdefault(delivery_id, []).append(AttemptRow(at, status_code, error))
    return [
        DeliveryRow(id=i, type=t, state=s, next_attempt_at=n, attempts=by_delivery.get(i, []))
        for i, t, s, n in deliveries
    ]


def worker_lost(index: int, payload: bytes, action: str | None, attempts: int) -> FinishedItem:
    """The failed result of an item whose worker vanished `attempts` times."""
    details = (
        f"the item's worker stopped responding {attempts} times (its lease expired); giving up"
    )
    entry = failure_entry(index, codec.decode_item(payload), action, "WorkerLost", details)
    return FinishedItem(index, False, codec.dumps(entry))


# -- metrics ------------------------------------------------------------------------------------

LEASES_EXPIRED = MetricTotal("leases_expired", "", "", 1.0)


def duration_bucket(seconds: float) -> int:
    """The index of the first bucket of JOB_DURATION_BUCKETS that `seconds` fits in (as the
    `metric_counts.durations` queries count it: the bounds below it)."""
    return sum(1 for bound in JOB_DURATION_BUCKETS if bound < seconds)


def purged_totals(row: tuple[Any, ...]) -> list[MetricTotal]:
    """What a job counted, from `purge_expired.counts`, to add to the metric totals as it is
    purged, so that no counter goes down when its job goes."""
    job_type, status, progress, failures, created_at, finished_at = row
    totals = [
        MetricTotal("items_finished", job_type, "success", float(progress - failures)),
        MetricTotal("items_finished", job_type, "failure", float(failures)),
    ]
    if finished_at is not None:
        seconds = finished_at - created_at
        totals += [
            MetricTotal("jobs_finished", job_type, status, 1.0),
            MetricTotal("job_duration", job_type, str(duration_bucket(seconds)), 1.0),
            MetricTotal("job_duration_seconds", job_type, "", seconds),
        ]
    return totals


def total_params(total: MetricTotal) -> dict[str, Any]:
    """The parameters of `metric_totals.add`."""
    return {
        "name": total.name,
        "job_type": total.job_type,
        "label": total.label,
        "value": total.value,
    }


def metric_counts(
    jobs: list[Any], durations: list[Any], leases: int, totals: list[Any], running: list[Any]
) -> MetricCounts:
    """MetricCounts from the rows of the `metric_counts.*` queries."""
    return MetricCounts(
        jobs=[
            JobCounts(t, Status(s), int(n), int(ok), int(bad), int(w))
            for t, s, n, ok, bad, w in jobs
        ],
        durations=[(t, int(b), int(n), float(secs)) for t, b, n, secs in durations],
        leases_active=int(leases),
        totals=[MetricTotal(n, t, label, float(v)) for n, t, label, v in totals],
        running=[(t, int(n)) for t, n in running],
    )


def lapsed_lease(row: tuple[Any, ...]) -> LapsedLease:
    """A LapsedLease from a row of `lapsed_leases`."""
    lease_id, worker_id, job_id, job_type, tenant, status, items = row
    return LapsedLease(lease_id, worker_id, job_id, job_type, tenant, Status(status), int(items))


# -- pages --------------------------------------------------------------------------------------


def keyset_query(operation: str, after: K | None, before: K | None, start: K) -> tuple[str, K]:
    """The named query and key of one page: `<operation>.before` going back from `before`,
    else `<operation>.after` going on from `after` (from `start` when neither is given)."""
    if before is not None:
        return f"{operation}.before", before
    return f"{operation}.after", start if after is None else after


def keyset_page(rows: list[T], size: int, *, backwards: bool) -> tuple[list[T], bool]:
    """A page from `size + 1` fetched rows: the first `size`, in ascending key order, and
    whether there were more (the extra row)."""
    page = rows[:size]
    if backwards:  # `.before` queries read in descending order
        page.reverse()
    return page, len(rows) > size


# -- errors both backends raise -----------------------------------------------------------------


def too_many_jobs(active: int) -> TooManyJobs:
    """The tenant is at its quota of unfinished jobs."""
    return TooManyJobs(
        f"this tenant already has {active} queued or working jobs, the most allowed; "
        "wait for some to finish",
        retry_after=5,
    )


def idempotency_key_reused() -> IdempotencyKeyReused:
    """A known Idempotency-Key came with a different request."""
    return IdempotencyKeyReused(
        "this Idempotency-Key was already used for a different request; use a new key for a new job"
    )


def job_finished(job_id: str, status: Status) -> JobFinished:
    """A finished job cannot be stopped."""
    return JobFinished(
        f"job {job_id} is already {status.value}; only queued or working jobs can be stopped"
    )
