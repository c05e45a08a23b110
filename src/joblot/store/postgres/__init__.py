"""The PostgreSQL backend: API nodes and worker processes on many machines share one database.

`PostgresStore` is the Store; each of its methods runs one function of `clients`, `work` or
`maintenance` on a connection of its `Pool`. Idle workers are woken by `notify`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from joblot.store import (
    ANY_JOB,
    NO_LIMITS,
    AttemptOutcome,
    Changes,
    Claim,
    DeliveryRow,
    DueDelivery,
    FinishedItem,
    FinishOutcome,
    JobChange,
    JobFilter,
    JobRow,
    LapsedLease,
    MetricCounts,
    NewJob,
    Pace,
    Page,
    RetryLater,
    TokenCount,
    TokenRow,
    TypeLimits,
    WebhookSecret,
)
from joblot.store.postgres import clients, connection, maintenance, webhooks, work
from joblot.store.postgres.connection import SQL, WAIT_SECONDS, Pool
from joblot.store.postgres.notify import ChangeNotifier, WorkListener

# While the LISTEN connection is up, idle workers and watchers rely on notifications and look
# on their own only this often: for what no notification announces (a rate limit's window
# moving on) and in case one was lost.
NOTIFIED_POLL_SECONDS = 1.0


class PostgresStore:
    """Store on a PostgreSQL database, through a pool of connections opened on first use."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = connection.MIN_CONNECTIONS,
        max_size: int = 10,
        timeout: float = WAIT_SECONDS,
    ) -> None:
        info = connection.conninfo(url)
        self._pool = Pool(info, min_size=min_size, max_size=max_size, timeout=timeout)
        self._listener = WorkListener(info, SQL["work.listen"], SQL["work.heartbeat"])
        self._notifier = ChangeNotifier(self._announce)
        self._work_seen: int | None = None  # notifications a wait_for_work has returned at
        self._change_seen: int | None = None  # and a wait_for_change

    async def close(self) -> None:
        """Stop listening and close every pooled connection."""
        await self._notifier.close()
        await self._listener.close()
        await self._pool.close()

    async def wait_for_work(self, timeout: float) -> None:
        """Return at the next NOTIFY (new work, or a change that may free room for a limited
        job type), or after `timeout` seconds; while listening, after NOTIFIED_POLL_SECONDS
        if that is longer."""
        timeout = max(timeout, NOTIFIED_POLL_SECONDS) if self._listener.up else timeout
        self._work_seen = await self._listener.wait(timeout, self._work_seen)

    async def wait_for_change(self, timeout: float) -> None:
        """Return at the next NOTIFY of a change or a submit made on any node, or after
        `timeout` seconds; while listening, after NOTIFIED_POLL_SECONDS if that is longer."""
        timeout = max(timeout, NOTIFIED_POLL_SECONDS) if self._listener.up else timeout
        self._change_seen = await self._listener.wait(timeout, self._change_seen)

    async def _announce(self) -> None:
        async with self._pool.connection() as conn:
            await connection.rowcount(conn, "changes.notify")

    # -- changes ------------------------------------------------------------------------------

    async def change_position(self) -> str:
        """The snapshot of now."""
        async with self._pool.connection() as conn:
            return await clients.change_position(conn)

    async def changes_since(self, position: str) -> Changes[JobChange]:
        """Every job changed since snapshot `position`, in one query (two index probes)."""
        async with self._pool.connection() as conn:
            return await clients.changes_since(conn, position)

    async def tenant_changes(self, tenant: str, position: str, now: float) -> Changes[JobRow]:
        """The tenant's jobs changed since snapshot `position`, without results."""
        async with self._pool.connection() as conn:
            return await clients.tenant_changes(conn, tenant, position, now)

    def valid_position(self, position: str) -> bool:
        """A snapshot PostgreSQL can read back."""
        return clients.valid_position(position)

    async def listening(self, timeout: float) -> bool:
        """Start the LISTEN connection now; True once it is up (within `timeout` seconds)."""
        return await self._listener.listening(timeout)

    # -- migrations ---------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply missing migrations, one transaction each, under an advisory lock."""
        async with self._pool.connection() as conn:
            return await connection.migrate(conn)

    async def schema_version(self) -> tuple[int, int]:
        """(applied, latest) migration numbers."""
        async with self._pool.connection() as conn:
            return await connection.schema_version(conn)

    async def durability_settings(self) -> dict[str, str]:
        """The server's `fsync` and `synchronous_commit`."""
        async with self._pool.connection() as conn:
            return await connection.durability_settings(conn)

    # -- what clients do ----------------------------------------------------------------------
    # Writes answered to a client run in `acknowledged` transactions: on disk before the answer.

    async def submit_job(self, job: NewJob) -> tuple[JobRow, bool]:
        """Insert the job and its items in one transaction (or find the idempotent twin)."""
        async with self._pool.acknowledged() as conn:
            return await clients.submit_job(conn, job)

    async def get_job(self, tenant: str, job_id: str, now: float, inline: int) -> JobRow | None:
        """One primary-key lookup, with the inline results in the same round trip."""
        async with self._pool.connection() as conn:
            return await clients.get_job(conn, tenant, job_id, now, inline)

    async def get_jobs(
        self, tenant: str, job_ids: list[str], now: float, inline: int
    ) -> list[JobRow]:
        """The jobs that exist among `job_ids`, in the order asked, in one query."""
        async with self._pool.connection() as conn:
            return await clients.get_jobs(conn, tenant, job_ids, now, inline)

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
        """A page of the jobs `where` lets through, in listing order, each with its results
        inline when small."""
        async with self._pool.connection() as conn:
            return await clients.list_jobs(
                conn,
                tenant,
                now=now,
                after=after,
                before=before,
                size=size,
                inline=inline,
                where=where,
            )

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
        """A page of a job's result entries by index (only failed or succeeded ones if
        `success` is given)."""
        async with self._pool.connection() as conn:
            return await clients.list_results(
                conn,
                tenant,
                job_id,
                now=now,
                after=after,
                before=before,
                size=size,
                success=success,
            )

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
        """A page of `list_results`: the server's shared buffers hold what it reads, not this
        process."""
        return await self.list_results(
            tenant, job_id, now=now, after=after, before=None, size=size, success=success
        )

    async def failed_items(self, tenant: str, job_id: str, now: float) -> list[bytes] | None:
        """The payloads of a job's failed items, as submitted, in index order."""
        async with self._pool.connection() as conn:
            return await clients.failed_items(conn, tenant, job_id, now)

    async def job_version(self, tenant: str, job_id: str, now: float) -> int | None:
        """The job's change counter, for ETags and long polls."""
        async with self._pool.connection() as conn:
            return await clients.job_version(conn, tenant, job_id, now)

    async def job_expiry(self, tenant: str, job_id: str, now: float) -> float | None:
        """When the job expires (None: unfinished, or no such job)."""
        async with self._pool.connection() as conn:
            return await clients.job_expiry(conn, tenant, job_id, now)

    async def stop_job(
        self, tenant: str | None, job_id: str, *, message: str | None, now: float, retention: float
    ) -> bool:
        """Fail an unfinished job; False when there is no such job for this tenant."""
        async with self._pool.acknowledged() as conn:
            stopped = await clients.stop_job(
                conn, tenant, job_id, message=message, now=now, retention=retention
            )
        if stopped:
            self._notifier.changed()
        return stopped

    async def create_token(self, token_id: str, tenant: str, digest: str, now: float) -> None:
        """Store a new token's digest."""
        async with self._pool.acknowledged() as conn:
            await clients.create_token(conn, token_id, tenant, digest, now)

    async def list_tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included, oldest first."""
        async with self._pool.connection() as conn:
            return await clients.list_tokens(conn)

    async def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke a live token."""
        async with self._pool.acknowledged() as conn:
            return await clients.revoke_token(conn, token_id, now)

    async def find_token(self, digest: str) -> tuple[str, str] | None:
        """(token id, tenant) of the live token with this digest."""
        async with self._pool.connection() as conn:
            return await clients.find_token(conn, digest)

    async def count_tokens(self) -> TokenCount:
        """How many live and how many revoked tokens there are."""
        async with self._pool.connection() as conn:
            return await clients.count_tokens(conn)

    async def live_tokens(self, token_ids: list[str]) -> set[str]:
        """The ids among `token_ids` of live tokens."""
        async with self._pool.connection() as conn:
            return await clients.live_tokens(conn, token_ids)

    # -- what workers do ----------------------------------------------------------------------

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
        """Lease a batch of the runnable job whose turn it is and whose type's limits leave
        room, sized by its type's pace."""
        async with self._pool.connection() as conn:
            claim = await work.claim_items(
                conn,
                worker_id,
                job_types,
                limit=limit,
                now=now,
                lease_seconds=lease_seconds,
                limits=limits,
                paces=paces,
                max_attempts=max_attempts,
            )
        if claim is not None and claim.started:  # queued -> working
            self._notifier.changed()
        return claim

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
        """Record results if the lease is still held; otherwise refuse them all."""
        async with self._pool.connection() as conn:
            outcome = await work.finish_items(
                conn,
                lease_id,
                items,
                message=message,
                final=final,
                now=now,
                retention=retention,
                abort=abort,
                later=later,
            )
        if outcome.accepted:
            self._notifier.changed()
        return outcome

    async def renew_leases(self, lease_ids: list[int], now: float, until: float) -> set[int]:
        """Extend the leases still held; a lapsed one is not revived."""
        if not lease_ids:
            return set()
        async with self._pool.connection() as conn:
            return await work.renew_leases(conn, lease_ids, now, until)

    async def release_lease(self, lease_id: int, now: float) -> int:
        """Give back the unstarted items of a lease at once (a worker stopping cleanly)."""
        async with self._pool.connection() as conn:
            released = await work.release_lease(conn, lease_id, now)
        if released:  # work for the idle workers of other nodes
            self._notifier.changed()
        return released

    # -- cluster-wide chores ------------------------------------------------------------------

    async def requeue_expired(self, now: float, max_attempts: int, retention: float) -> int:
        """Return the items of lapsed leases to the queue; fail those out of attempts."""
        async with self._pool.connection() as conn:
            requeued = await maintenance.requeue_expired(conn, now, max_attempts, retention)
        if requeued:  # work again, and jobs that ran out of attempts may have failed
            self._notifier.changed()
        return requeued

    async def lapsed_leases(self, now: float) -> list[LapsedLease]:
        """The leases requeue_expired would requeue at `now`, with their jobs and workers."""
        async with self._pool.connection() as conn:
            return await maintenance.lapsed_leases(conn, now)

    async def purge_expired(self, now: float) -> int:
        """Delete jobs past their retention, in short transactions."""
        async with self._pool.connection() as conn:
            return await maintenance.purge_expired(conn, now)

    async def metric_counts(self, now: float) -> MetricCounts:
        """Counts of every job, live leases and the metric totals, in one snapshot."""
        async with self._pool.connection() as conn:
            return await clients.read_metric_counts(conn, now)

    async def try_lead(self, chore: str, holder: str, now: float, until: float) -> bool:
        """Take or keep the lead of a chore; one process of the cluster holds it at a time."""
        async with self._pool.connection() as conn:
            return await maintenance.try_lead(conn, chore, holder, now, until)

    # -- webhook deliveries -------------------------------------------------------------------
    # A redelivery and a secret are answered to a client: acknowledged transactions.

    async def claim_deliveries(
        self, *, limit: int, now: float, lease_seconds: float
    ) -> list[DueDelivery]:
        """Lease due deliveries for one attempt each, with SKIP LOCKED."""
        async with self._pool.connection() as conn:
            return await webhooks.claim_deliveries(
                conn, limit=limit, now=now, lease_seconds=lease_seconds
            )

    async def keep_delivery_body(self, delivery_id: str, body: bytes) -> bytes:
        """Store the event a delivery sends unless one is stored; return the stored one."""
        async with self._pool.connection() as conn:
            return await webhooks.keep_delivery_body(conn, delivery_id, body)

    async def finish_delivery(self, outcome: AttemptOutcome, now: float) -> bool:
        """Record an attempt's answer; move the delivery on if its lease is still held."""
        async with self._pool.connection() as conn:
            return await webhooks.finish_delivery(conn, outcome, now)

    async def list_deliveries(
        self, tenant: str, job_id: str, now: float
    ) -> list[DeliveryRow] | None:
        """A job's deliveries with their attempts; None if there is no such job."""
        async with self._pool.connection() as conn:
            return await webhooks.list_deliveries(conn, tenant, job_id, now)

    async def redeliver(self, tenant: str, job_id: str, now: float) -> int | None:
        """Queue a new round of a job's deliveries, due now; None if there is no such job."""
        async with self._pool.acknowledged() as conn:
            return await webhooks.redeliver(conn, tenant, job_id, now)

    async def job_callback(
        self, tenant: str, job_id: str, now: float
    ) -> tuple[str, str | None] | None:
        """The job's callback_url and status base, if it has a callback."""
        async with self._pool.connection() as conn:
            return await webhooks.job_callback(conn, tenant, job_id, now)

    async def webhook_secret(
        self, tenant: str, candidate: str, now: float, *, rotate: bool
    ) -> WebhookSecret:
        """The tenant's signing secret, created on first use (or rotated)."""
        async with self._pool.acknowledged() as conn:
            return await webhooks.webhook_secret(conn, tenant, candidate, now, rotate=rotate)
