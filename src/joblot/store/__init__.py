"""The storage seam: the rows it speaks in and one narrow Protocol that every backend implements.

The rows are defined in `store/records.py` and re-exported here. The backends live in
`store/sqlite/` and `store/postgres/`, cut the same way: `connection.py` (plumbing and
migrations), `clients.py` (what API clients do: submit, read, cancel, tokens), `work.py` (what
workers do: claim, finish, renew, release), `maintenance.py` (cluster-wide chores: requeue,
purge, leadership) and, for PostgreSQL, `notify.py`. What both share is in `store/common.py`,
and what their claims share (sizes, turns, limits) in `store/claims.py`. Nothing under
`joblot.store` imports the layers above it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from joblot.errors import ConfigError
from joblot.store.records import (
    ANY_JOB,
    NO_LIMITS,
    AttemptOutcome,
    AttemptRow,
    Changes,
    Claim,
    ClaimedItem,
    DeliveryRow,
    DueDelivery,
    FinishedItem,
    FinishOutcome,
    JobChange,
    JobCounts,
    JobFilter,
    JobRow,
    LapsedLease,
    MetricCounts,
    MetricTotal,
    NewJob,
    Pace,
    Page,
    RetryLater,
    TokenCount,
    TokenRow,
    TypeLimits,
    WebhookSecret,
)

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
# How SQLite puts acknowledged writes on disk: `group` commits (one WAL sync shared by the
# writes acknowledged at the same moment), `transaction` (each of them commits with
# synchronous = FULL), or `database` (every commit with FULL, workers' results too).
SQLITE_SYNC_MODES = ("group", "transaction", "database")

__all__ = [
    "ANY_JOB",
    "NO_LIMITS",
    "POSTGRES_PREFIXES",
    "SQLITE_PREFIX",
    "SQLITE_SYNC_MODES",
    "AttemptOutcome",
    "AttemptRow",
    "Changes",
    "Claim",
    "ClaimedItem",
    "DeliveryRow",
    "DueDelivery",
    "FinishOutcome",
    "FinishedItem",
    "JobChange",
    "JobCounts",
    "JobFilter",
    "JobRow",
    "LapsedLease",
    "MetricCounts",
    "MetricTotal",
    "NewJob",
    "Pace",
    "Page",
    "RetryLater",
    "Store",
    "TokenCount",
    "TokenRow",
    "TypeLimits",
    "WebhookSecret",
    "backend_for",
    "open_store",
]


class Store(Protocol):
    """Every operation the service needs from a database; SQL lives beside each backend.

    Time is always a parameter (`now`): the service owns the clock, so the rules can be
    tested at any instant without sleeping.
    """

    async def migrate(self) -> list[int]:
        """Apply the missing numbered migrations; return the numbers applied."""

    async def schema_version(self) -> tuple[int, int]:
        """(applied, latest) migration numbers."""

    async def durability_settings(self) -> dict[str, str]:
        """The database server's settings that decide whether a commit is on disk when it
        returns (PostgreSQL: `fsync`, `synchronous_commit`); empty where there are none."""

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
        *,
        now: float,
        after: str | None,
        before: str | None,
        size: int,
        inline: int,
        where: JobFilter = ANY_JOB,
    ) -> Page[JobRow]:
        """Jobs ordered by `list_key`, after or before a key, small ones with results inline;
        only those `where` lets through."""

    async def list_results(
        self,
        tenant: str,
        job_id: str,
        *,
        now: float,
        after: int | None,
        before: int | None,
        size: int,
        success: bool | None = None,
    ) -> Page[tuple[int, bytes]] | None:
        """Result entries of a job by index, after or before an index, only the failed or the
        succeeded ones if `success` says which; None if no such job."""

    async def export_results(
        self,
        tenant: str,
        job_id: str,
        *,
        now: float,
        after: int | None,
        size: int,
        success: bool | None = None,
    ) -> Page[tuple[int, bytes]] | None:
        """One page of an export: `list_results` going on from `after`, read so that reading a
        whole job in pages grows no cache with it."""

    async def failed_items(self, tenant: str, job_id: str, now: float) -> list[bytes] | None:
        """The payloads of a job's failed items, as submitted, in index order; None if there
        is no such job."""

    async def job_version(self, tenant: str, job_id: str, now: float) -> int | None:
        """The job's version counter (bumped by every visible change), or None."""

    async def job_expiry(self, tenant: str, job_id: str, now: float) -> float | None:
        """When the job expires, after which it reads as missing and may be purged; None
        while it has no expiry (unfinished) or if there is no such job."""

    async def stop_job(
        self, tenant: str | None, job_id: str, *, message: str | None, now: float, retention: float
    ) -> bool:
        """Fail an unfinished job: unclaimed items are skipped; message None means a cancel.

        `tenant` None is a worker stopping a job it runs (any tenant). False when there is no
        such job; JobFinished when it already finished.
        """

    async def claim_items(
        self,
        worker_id: str,
        job_types: list[str],
        *,
        limit: int,
        now: float,
        lease_seconds: float,
        limits: TypeLimits = NO_LIMITS,
        paces: Mapping[str, Pace] | None = None,
        max_attempts: int | None = None,
    ) -> Claim | None:
        """Lease items of the runnable job whose turn it is, within its type's `limits`: as
        many as its type's pace allows (`limit` for a type without one); the jobs of a type
        held back say so in their message. An item whose worker vanished `max_attempts - 1`
        times is claimed alone (None: no limit)."""

    async def finish_items(
        self,
        lease_id: int,
        items: list[FinishedItem],
        *,
        message: str | None,
        final: bool,
        now: float,
        retention: float,
        abort: str | None = None,
        later: Sequence[RetryLater] = (),
    ) -> FinishOutcome:
        """Record results under a lease, unless it lapsed; `final` releases the lease. The
        items `later` go back to the queue, each due after its delay.

        With `abort`, a handler stopped the whole job: in the same transaction the job fails
        with that message (unless it already finished), before the results are counted.
        """

    async def renew_leases(self, lease_ids: list[int], now: float, until: float) -> set[int]:
        """Extend the live leases among `lease_ids`; return those still held."""

    async def release_lease(self, lease_id: int, now: float) -> int:
        """Give back a lease's unfinished items at once, without using up an attempt."""

    async def requeue_expired(self, now: float, max_attempts: int, retention: float) -> int:
        """Put items of lapsed leases back in the queue (or fail them); return how many."""

    async def lapsed_leases(self, now: float) -> list[LapsedLease]:
        """The leases `requeue_expired` would requeue at `now` (the same ones, in the same
        order, at most as many), with the job and worker they belong to."""

    async def purge_expired(self, now: float) -> int:
        """Delete jobs whose retention has passed, moving what they counted to the metric
        totals in the same transaction; return how many."""

    async def metric_counts(self, now: float) -> MetricCounts:
        """Counts of every job, live leases and the metric totals, in one snapshot."""

    async def try_lead(self, chore: str, holder: str, now: float, until: float) -> bool:
        """Take or keep the lead of a cluster-wide chore until `until`; False if another
        holder's lead has not lapsed yet."""

    async def claim_deliveries(
        self, *, limit: int, now: float, lease_seconds: float
    ) -> list[DueDelivery]:
        """Lease up to `limit` due webhook deliveries for one attempt each, recording the
        attempt as started; a delivery leased by another process is never handed out."""

    async def keep_delivery_body(self, delivery_id: str, body: bytes) -> bytes:
        """Store the event a delivery sends unless one is stored; return the stored one."""

    async def finish_delivery(self, outcome: AttemptOutcome, now: float) -> bool:
        """Record an attempt's answer and, if its lease is still held, the delivery's next
        state; False when the lease was lost (the answer is recorded all the same)."""

    async def list_deliveries(
        self, tenant: str, job_id: str, now: float
    ) -> list[DeliveryRow] | None:
        """A job's deliveries with their attempts; None if there is no such job."""

    async def redeliver(self, tenant: str, job_id: str, now: float) -> int | None:
        """Queue a new round of attempts of a job's deliveries, due now; how many there
        are, or None if there is no such job."""

    async def job_callback(
        self, tenant: str, job_id: str, now: float
    ) -> tuple[str, str | None] | None:
        """The job's `callback_url` and the base of its status url, if it has a callback."""

    async def webhook_secret(
        self, tenant: str, candidate: str, now: float, *, rotate: bool
    ) -> WebhookSecret:
        """The tenant's signing secret, `candidate` becoming it if there is none yet (or,
        with `rotate`, replacing it)."""

    async def create_token(self, token_id: str, tenant: str, digest: str, now: float) -> None:
        """Store a new token's digest."""

    async def list_tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included."""

    async def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke a token; False if there is no such live token."""

    async def find_token(self, digest: str) -> tuple[str, str] | None:
        """(token id, tenant) of the live token with this digest."""

    async def count_tokens(self) -> TokenCount:
        """How many live and how many revoked tokens there are."""

    async def live_tokens(self, token_ids: list[str]) -> set[str]:
        """The ids among `token_ids` of tokens that are live (not revoked)."""

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new items may be claimable, or after `timeout` seconds at the latest."""

    async def change_position(self) -> str:
        """The position from which only changes made from now on are news."""

    async def changes_since(self, position: str) -> Changes[JobChange]:
        """The jobs of every tenant changed since `position` (one query), and the next one."""

    async def tenant_changes(self, tenant: str, position: str, now: float) -> Changes[JobRow]:
        """The tenant's jobs changed since `position`, in their latest state without results,
        and the next position."""

    def valid_position(self, position: str) -> bool:
        """Whether `position` (from a client's Last-Event-ID) is one this backend can read."""

    async def wait_for_change(self, timeout: float) -> None:
        """Return when a job may have changed (where the backend notifies), else after
        `timeout`; a change announced while nobody waited returns the next call at once."""

    async def close(self) -> None:
        """Release connections and threads."""


def backend_for(database_url: str) -> str | None:
    """`sqlite` or `postgres`: the backend a database URL names, or None for neither."""
    if database_url.startswith(SQLITE_PREFIX):
        return "sqlite"
    if database_url.startswith(POSTGRES_PREFIXES):
        return "postgres"
    return None


def open_store(database_url: str, pool_size: int = 10, *, sqlite_sync: str = "group") -> Store:
    """The backend for `database_url`; `pool_size` bounds a PostgreSQL store's connections,
    `sqlite_sync` is how a SQLite store syncs acknowledged writes (`SQLITE_SYNC_MODES`).

    Backends are imported here, when chosen, so psycopg is loaded only by PostgreSQL users.
    """
    backend = backend_for(database_url)
    if backend == "sqlite":
        from joblot.store.sqlite import SQLiteStore

        return SQLiteStore(database_url.removeprefix(SQLITE_PREFIX), sync=sqlite_sync)
    if backend == "postgres":
        from joblot.store.postgres import PostgresStore

        return PostgresStore(database_url, max_size=pool_size)
    raise ConfigError(
        f"unsupported database URL {database_url!r}: "
        "use sqlite:///path/to/file.db or postgresql://user@host/db"
    )
