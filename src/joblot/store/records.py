"""The rows and values the storage seam speaks in: what the service hands a store, and what
a store hands back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from joblot.models import Limit, Status

T = TypeVar("T")


@dataclass(frozen=True)
class NewJob:
    """A validated job, ready to be stored with its items."""

    id: str
    tenant: str
    job_type: str
    action: str | None
    max_failures: int | None
    payloads: list[bytes]  # each item as JSON, in index order
    created_at: float
    idempotency_key: str | None = None
    request_hash: str | None = None
    max_active_jobs: int | None = None  # refuse with TooManyJobs past this many unfinished
    callback_url: str | None = None  # where its completion event goes, checked by the caller
    public_url: str | None = None  # base of the JobStatus `url` that event carries
    message: str | None = None  # shown once the job starts, until a handler reports one


@dataclass(frozen=True)
class TokenRow:
    """An API token as listed: never the token itself."""

    id: str
    tenant: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class TokenCount:
    """How many tokens there are: live ones, and revoked ones (which keep a server closed)."""

    live: int
    revoked: int


@dataclass(frozen=True)
class JobRow:
    """A job as stored: the JobStatus fields plus what ETags and lists need."""

    id: str
    job_type: str
    status: Status
    total: int
    progress: int
    message: str | None
    version: int
    results: list[bytes] | None  # finished entries as JSON, by index; None when not inline
    list_key: str
    failures: int  # items that finished unsuccessfully (counted with `progress`)
    created_at: float
    started_at: float | None  # the first claim
    updated_at: float  # the last visible change (version bump)
    finished_at: float | None


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing shows: any of `statuses` (all when None), of `job_type` if given."""

    statuses: frozenset[Status] | None = None
    job_type: str | None = None


ANY_JOB = JobFilter()


@dataclass(frozen=True)
class ClaimedItem:
    """One item handed to a worker under a lease."""

    index: int
    payload: bytes
    attempt: int
    retries: int = 0  # times its handler raised an error that its job type retries


@dataclass(frozen=True)
class RetryLater:
    """An item whose handler raised an error its job type retries: it goes back to the queue,
    and no claim takes it for `delay` seconds."""

    index: int
    delay: float


@dataclass(frozen=True)
class TypeLimits:
    """The cluster-wide limits of the job types a worker runs (`by_type`), how many items of a
    limited type it can start right now (`free`), and how many it runs at once when all its
    slots are free (`capacity`; 0: unknown).

    A claim of a type with a `concurrency` limit takes at most `free` of the type's slots
    (`Claim.slots`), which its limit counts, and as many items as the worker runs through those
    slots in a claim's time (its pace, scaled by slots / capacity; as many as its slots when
    the capacity is unknown). A claim of a type with a `rate` takes no more items than `free`,
    since it counts them as started.

    `own` is what the claiming worker's own live leases hold: lease id → (job type, items of
    it that may be running now, at most its slots). The limit counts those leases as the
    worker says rather than from their leased items, which fall only when results are
    reported: so the worker can claim a type's next batch while the last one is reported."""

    by_type: Mapping[str, Limit] = field(default_factory=dict)
    free: int = 0
    capacity: int = 0
    own: Mapping[int, tuple[str, int]] = field(default_factory=dict)


NO_LIMITS = TypeLimits()


@dataclass(frozen=True)
class Pace:
    """How a worker takes the items of one job type: at most `size` per claim, which it
    expects to keep it busy `seconds` (0 while it has not measured the type yet). A job that
    gets a claim waits that long, twice over, before its next turn in the round robin comes,
    so a job of slow items leaves as much of the workers' time to the others as it takes."""

    size: int
    seconds: float = 0.0


@dataclass(frozen=True)
class Claim:
    """A batch of items of one job, held under one lease; `lease_id` is the fencing token."""

    lease_id: int
    job_id: str
    job_type: str
    items: list[ClaimedItem]
    tenant: str = ""
    started: bool = False  # this claim moved the job from queued to working
    # How many of its items may run at once: the slots of its type's `concurrency` limit that
    # the lease holds (None: the type has no such limit).
    slots: int | None = None


@dataclass(frozen=True)
class FinishedItem:
    """The outcome of one item, as its result entry in JSON."""

    index: int
    success: bool
    entry: bytes


@dataclass(frozen=True)
class FinishOutcome:
    """What the store answered to a batch of results."""

    accepted: bool  # False: the lease had lapsed or was revoked; nothing was recorded
    status: Status | None = None  # the job's status after the batch, when accepted
    finished: bool = False  # this batch finished the job (it was unfinished before)


@dataclass(frozen=True)
class LapsedLease:
    """A lease whose worker stopped renewing it, as found before its items are requeued."""

    lease_id: int
    worker_id: str
    job_id: str
    job_type: str
    tenant: str
    job_status: Status
    items: int  # items still held under it


@dataclass(frozen=True)
class JobCounts:
    """What the jobs of one type in one status add up to, for metrics."""

    job_type: str
    status: Status
    jobs: int
    succeeded: int  # items finished successfully
    failed: int  # items failed for good
    waiting: int  # items not yet claimed


@dataclass(frozen=True)
class MetricTotal:
    """A counter kept in the database: what purged jobs counted, and events that leave no
    row to count (a lease that lapsed). `name` is the metric, `label` its other label."""

    name: str
    job_type: str
    label: str
    value: float


@dataclass(frozen=True)
class MetricCounts:
    """Every number the metrics read from the database, from one consistent snapshot."""

    jobs: list[JobCounts]
    # (job_type, bucket, jobs, seconds): finished jobs by the index of the first bucket of
    # JOB_DURATION_BUCKETS their duration fits in (len(JOB_DURATION_BUCKETS) for none)
    durations: list[tuple[str, int, int, float]]
    leases_active: int
    totals: list[MetricTotal]
    running: list[tuple[str, int]] = field(default_factory=list)  # (job_type, items leased)


@dataclass(frozen=True)
class DueDelivery:
    """A webhook delivery claimed for one attempt; `lease_token` fences its outcome."""

    id: str  # the webhook-id, the same on every attempt
    job_id: str
    tenant: str
    job_type: str
    url: str
    type: str  # job.completed or job.failed
    public_url: str | None
    created_at: float  # when the job finished
    attempt: int  # this attempt's number, 1-based, across every round
    round_attempt: int  # its number within the round (a redeliver starts a new round)
    lease_token: int
    body: bytes | None  # the event as first sent; None before the first attempt


@dataclass(frozen=True)
class AttemptOutcome:
    """How one delivery attempt ended, and what happens to the delivery next."""

    delivery_id: str
    attempt: int
    lease_token: int
    status_code: int | None
    error: str | None
    state: str  # pending (retry at next_attempt_at), delivered or failed
    next_attempt_at: float | None


@dataclass(frozen=True)
class AttemptRow:
    """One attempt as listed: both None while it runs."""

    at: float
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class DeliveryRow:
    """A delivery as listed at `GET .../deliveries`."""

    id: str
    type: str
    state: str
    next_attempt_at: float | None
    attempts: list[AttemptRow]


@dataclass(frozen=True)
class WebhookSecret:
    """A tenant's signing secret, and the one it replaced (still used for a while)."""

    secret: str
    previous: str | None
    rotated_at: float | None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a keyset-paginated listing."""

    rows: list[T]
    has_more: bool


@dataclass(frozen=True)
class JobChange:
    """A job whose last visible change a reader had not seen: who to wake, and the version."""

    id: str
    tenant: str
    version: int


@dataclass(frozen=True)
class Changes(Generic[T]):
    """What changed since a position, and the position after it. Positions are opaque text a
    backend makes and reads back (an event id of the tenant stream): SQLite's change number,
    PostgreSQL's snapshot."""

    rows: list[T]
    position: str
