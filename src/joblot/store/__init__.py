"""The storage seam: one narrow Protocol that every backend implements the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from joblot.models import JobState, Status

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


@dataclass(frozen=True)
class TokenRow:
    """An API token as listed: never the token itself."""

    id: str
    tenant: str
    created_at: float
    revoked_at: float | None


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


@dataclass(frozen=True)
class ClaimedItem:
    """One item handed to a worker under a lease."""

    index: int
    payload: bytes
    attempt: int


@dataclass(frozen=True)
class Claim:
    """A batch of items of one job, held under one lease; `lease_id` is the fencing token."""

    lease_id: int
    job_id: str
    job_type: str
    items: list[ClaimedItem]


@dataclass(frozen=True)
class FinishedItem:
    """The outcome of one item, as its result entry in JSON."""

    index: int
    success: bool
    entry: bytes


@dataclass(frozen=True)
class Finish:
    """What the store answered to a batch of results."""

    accepted: bool  # False: the lease had lapsed or was revoked; nothing was recorded
    job_status: Status | None = None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a keyset-paginated listing."""

    rows: list[T]
    has_more: bool


class Store(Protocol):
    """Every operation the service needs from a database; SQL lives beside each backend."""

    async def migrate(self) -> list[int]:
        """Apply the missing numbered migrations; return the numbers applied."""

    async def schema_version(self) -> tuple[int, int]:
        """(applied, latest) migration numbers."""

    async def submit_job(self, job: NewJob) -> tuple[JobRow, bool]:
        """Store a job and its items; with a known idempotency key return the existing job."""

    async def get_job(self, tenant: str, job_id: str, now: float, inline: int) -> JobRow | None:
        """One job, with its results inline when it has at most `inline` items."""

    async def get_jobs(
        self, tenant: str, job_ids: list[str], now: float, inline: int
    ) -> list[JobRow]:
        """The jobs among `job_ids` that exist, in the order asked."""

    async def list_jobs(
        self,
        tenant: str,
        now: float,
        after: str | None,
        before: str | None,
        size: int,
        inline: int,
    ) -> Page[JobRow]:
        """Jobs ordered by `list_key`, after or before a key, small ones with results inline."""

    async def list_results(
        self, tenant: str, job_id: str, now: float, after: int | None, before: int | None, size: int
    ) -> Page[tuple[int, bytes]] | None:
        """Result entries of a job by index, after or before an index; None if no such job."""

    async def job_version(self, tenant: str, job_id: str, now: float) -> int | None:
        """The job's version counter (bumped by every visible change), or None."""

    async def stop_job(
        self, tenant: str | None, job_id: str, message: str | None, now: float, retention: float
    ) -> JobRow | None:
        """Fail an unfinished job: unclaimed items are skipped; message None means a cancel."""

    async def claim_items(
        self, worker_id: str, job_types: list[str], limit: int, now: float, lease_seconds: float
    ) -> Claim | None:
        """Lease up to `limit` items of the least recently served runnable job."""

    async def finish_items(
        self,
        lease_id: int,
        items: list[FinishedItem],
        message: str | None,
        final: bool,
        now: float,
        retention: float,
    ) -> Finish:
        """Record results under a lease, unless it lapsed; `final` releases the lease."""

    async def renew_leases(self, lease_ids: list[int], now: float, until: float) -> set[int]:
        """Extend the live leases among `lease_ids`; return those still held."""

    async def release_lease(self, lease_id: int, now: float) -> int:
        """Give back a lease's unfinished items at once, without using up an attempt."""

    async def requeue_expired(self, now: float, max_attempts: int, retention: float) -> int:
        """Put items of lapsed leases back in the queue (or fail them); return how many."""

    async def purge_expired(self, now: float) -> int:
        """Delete jobs whose retention has passed; return how many."""

    async def create_token(self, token_id: str, tenant: str, digest: str, now: float) -> None:
        """Store a new token's digest."""

    async def list_tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included."""

    async def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke a token; False if there is no such live token."""

    async def find_token(self, digest: str) -> tuple[str, str] | None:
        """(token id, tenant) of the live token with this digest."""

    async def count_tokens(self) -> int:
        """How many live tokens there are."""

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new items may be claimable, or after `timeout` seconds at the latest."""

    async def close(self) -> None:
        """Release connections and threads."""


def open_store(database_url: str, pool_size: int = 10) -> Store:
    """The backend for `database_url`; `pool_size` bounds a PostgreSQL store's connections."""
    if database_url.startswith("sqlite:///"):
        from joblot.store.sqlite import SQLiteStore

        return SQLiteStore(database_url.removeprefix("sqlite:///"))
    if database_url.startswith(("postgresql://", "postgres://")):
        from joblot.store.postgres import PostgresStore  # psycopg is imported only when used

        return PostgresStore(database_url, max_size=pool_size)
    from joblot.errors import ConfigError

    raise ConfigError(
        f"no storage backend for {database_url!r}; "
        "use sqlite:///path/to/file.db or postgresql://user@host/db"
    )


_KEY_BASE = 10**16  # microseconds; inverted so that newer sorts first, good until year 2286


def _inverted_micros(t: float) -> str:
    return f"{_KEY_BASE - int(t * 1_000_000):016d}"


def unfinished_list_key(created_at: float, job_id: str) -> str:
    """Listing key of an unfinished job: these come first, newest first."""
    return f"0{_inverted_micros(created_at)}{job_id}"


def finished_prefix(finished_at: float) -> str:
    """Prefix that replaces the leading `0` of a key once a job finishes at `finished_at`."""
    return f"1{_inverted_micros(finished_at)}"


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
    }


def queued_row(job: NewJob) -> JobRow:
    """The row of `job` as it was just inserted."""
    total = len(job.payloads)
    list_key = unfinished_list_key(job.created_at, job.id)
    return JobRow(job.id, job.job_type, Status.QUEUED, total, 0, None, 1, None, list_key)


def state_params(
    job_id: str,
    old: JobState,
    new: JobState,
    now: float,
    retention: float,
    claimed_at: float | None,
) -> dict[str, Any]:
    """The parameters of `job_state.save`: what the rules decided, and whether the change is
    visible (bumping the version, hence the ETag) and finishes the job (stamping its purge
    time and its place among finished jobs)."""
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
        "bump": int(
            (new.status, new.progress, new.message) != (old.status, old.progress, old.message)
        ),
        "claimed_at": claimed_at,
        "finished": new.status.finished and not old.status.finished,
        "now": now,
        "retention": retention,
        "finished_prefix": finished_prefix(now),
    }


def job_state(row: tuple[Any, ...]) -> JobState:
    """A JobState from the columns of `job_state.select` (flags as booleans or 0/1)."""
    status, total, progress, failures, pending, message, message_set, max_failures = row[:8]
    skipped, cancelled = row[8:]
    return JobState(
        Status(status),
        total,
        progress,
        failures,
        pending,
        message,
        bool(message_set),
        max_failures,
        skipped,
        bool(cancelled),
    )


K = TypeVar("K")


def keyset_query(operation: str, after: K | None, before: K | None, start: K) -> tuple[str, K]:
    """The named query and key of one page: `<operation>.before` going back from `before`,
    else `<operation>.after` going on from `after` (from `start` when neither is given)."""
    if before is not None:
        return f"{operation}.before", before
    return f"{operation}.after", start if after is None else after


def keyset_page(rows: list[T], size: int, backwards: bool) -> tuple[list[T], bool]:
    """A page from `size + 1` fetched rows: the first `size`, in ascending key order, and
    whether there were more (the extra row)."""
    page = rows[:size]
    if backwards:  # `.before` queries read in descending order
        page.reverse()
    return page, len(rows) > size
