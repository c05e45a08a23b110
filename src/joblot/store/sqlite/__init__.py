"""The SQLite backend: one file in WAL mode, shared by the API and worker processes of a host.

`SQLiteStore` is the Store; each of its methods runs one function of `clients`, `work` or
`maintenance` on the writer thread or a reader thread of its `Database`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence

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
from joblot.store.sqlite import clients, connection, maintenance, webhooks, work

# Between two steps of a big submit or purge, the write lock is left free this long, so that
# writers of other processes waiting for it (they poll every millisecond) get their turn.
STEP_PAUSE_SECONDS = 0.005


class SQLiteStore:
    """Store on one SQLite file."""

    def __init__(self, path: str, *, sync: str = "group") -> None:
        self._db = connection.Database(path, sync=sync)

    async def close(self) -> None:
        """Close every connection and stop the threads."""
        await self._db.close()

    async def wait_for_work(self, timeout: float) -> None:
        """Differs by necessity from PostgreSQL: SQLite has no notifications, so idle workers
        poll (one cheap indexed read per `idle_poll_seconds`)."""
        await asyncio.sleep(timeout)

    # -- changes ------------------------------------------------------------------------------

    async def change_position(self) -> str:
        """The last change number handed out."""
        return await self._db.read(clients.change_position)

    async def changes_since(self, position: str) -> Changes[JobChange]:
        """Every job changed after change number `position` (one indexed range scan)."""
        return await self._db.read(clients.changes_since, position)

    async def tenant_changes(self, tenant: str, position: str, now: float) -> Changes[JobRow]:
        """The tenant's jobs changed after change number `position`, without results."""
        return await self._db.read(clients.tenant_changes, tenant, position, now)

    def valid_position(self, position: str) -> bool:
        """A change number."""
        return clients.valid_position(position)

    async def wait_for_change(self, timeout: float) -> None:
        """Differs by necessity from PostgreSQL: no notifications, so the watcher looks every
        `timeout` seconds (one indexed read for all waiters)."""
        await asyncio.sleep(timeout)

    # -- migrations ---------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply missing migrations in one write transaction each."""
        return await self._db.write(connection.migrate)

    async def schema_version(self) -> tuple[int, int]:
        """(applied, latest) migration numbers."""
        return await self._db.read(connection.schema_version)

    async def durability_settings(self) -> dict[str, str]:
        """Differs by necessity from PostgreSQL: no server settings; `Database.write` syncs."""
        return {}

    # -- what clients do ----------------------------------------------------------------------
    # Their writes are answered to a client, so `write` puts them on disk first.

    async def submit_job(self, job: NewJob) -> tuple[JobRow, bool]:
        """Insert the job and its items (or find the idempotent twin): in one transaction,
        or for a big job in steps that each hold the write lock briefly, the job row last."""
        if len(job.payloads) <= clients.CHUNK_ITEMS:
            return await self._db.write(clients.submit_job, job)
        twin = await self._db.write_redoable(clients.begin_load, job)
        if twin is not None:
            return twin, False
        try:
            for start in range(0, len(job.payloads), clients.CHUNK_ITEMS):
                await self._db.write_redoable(clients.load_items, job, start)
                await asyncio.sleep(STEP_PAUSE_SECONDS)
            row, created = await self._db.write(clients.end_load, job)
        except BaseException:
            await asyncio.shield(self._abandon(job.id))
            raise
        if not created:  # a twin with the same idempotency key finished loading first
            await self._abandon(job.id)
        return row, created

    async def _abandon(self, job_id: str) -> None:
        """Delete what a load that will not finish stored, a step at a time. Should that fail
        too, the maintenance leader deletes it once the load's time is up."""
        with contextlib.suppress(Exception):
            await self._in_steps(maintenance.abandon_step, job_id)

    async def _in_steps(self, step: Callable[[connection.Conn, str], bool], job_id: str) -> None:
        """Run `step` until it says it is done, leaving the write lock free in between."""
        while True:
            if await self._db.write_redoable(step, job_id):
                return
            await asyncio.sleep(STEP_PAUSE_SECONDS)

    async def get_job(self, tenant: str, job_id: str, now: float, inline: int) -> JobRow | None:
        """One primary-key lookup, plus a bounded range scan for inline results."""
        return await self._db.read_here(clients.get_job, tenant, job_id, now, inline)

    async def get_jobs(
        self, tenant: str, job_ids: list[str], now: float, inline: int
    ) -> list[JobRow]:
        """The jobs that exist among `job_ids`, in the order asked."""
        return await self._db.read(clients.get_jobs, tenant, job_ids, now, inline)

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
        return await self._db.read(
            clients.list_jobs,
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
        return await self._db.read(
            clients.list_results,
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
        """A page of `list_results` on the scan thread, whose connection keeps a small cache."""
        return await self._db.scan(
            clients.list_results,
            tenant,
            job_id,
            now=now,
            after=after,
            before=None,
            size=size,
            success=success,
        )

    async def failed_items(self, tenant: str, job_id: str, now: float) -> list[bytes] | None:
        """The payloads of a job's failed items, as submitted, in index order."""
        return await self._db.read(clients.failed_items, tenant, job_id, now)

    async def job_version(self, tenant: str, job_id: str, now: float) -> int | None:
        """The job's change counter, for ETags and long polls."""
        return await self._db.read_here(clients.job_version, tenant, job_id, now)

    async def job_expiry(self, tenant: str, job_id: str, now: float) -> float | None:
        """When the job expires (None: unfinished, or no such job)."""
        return await self._db.read(clients.job_expiry, tenant, job_id, now)

    async def stop_job(
        self, tenant: str | None, job_id: str, *, message: str | None, now: float, retention: float
    ) -> bool:
        """Fail an unfinished job; False when there is no such job for this tenant."""
        return await self._db.write(
            clients.stop_job, tenant, job_id, message=message, now=now, retention=retention
        )

    async def create_token(self, token_id: str, tenant: str, digest: str, now: float) -> None:
        """Store a new token's digest."""
        await self._db.write(clients.create_token, token_id, tenant, digest, now)

    async def list_tokens(self) -> list[TokenRow]:
        """Every token, revoked ones included, oldest first."""
        return await self._db.read(clients.list_tokens)

    async def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke a live token."""
        return await self._db.write(clients.revoke_token, token_id, now)

    async def find_token(self, digest: str) -> tuple[str, str] | None:
        """(token id, tenant) of the live token with this digest."""
        return await self._db.read(clients.find_token, digest)

    async def count_tokens(self) -> TokenCount:
        """How many live and how many revoked tokens there are."""
        return await self._db.read(clients.count_tokens)

    async def live_tokens(self, token_ids: list[str]) -> set[str]:
        """The ids among `token_ids` of live tokens."""
        return await self._db.read(clients.live_tokens, token_ids)

    # -- what workers do ----------------------------------------------------------------------
    # Their writes are redoable (not synced before returning): no client is told about them,
    # and leases fence them, so what a power cut takes back is run again, never counted twice.

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
        return await self._db.write_redoable(
            work.claim_items,
            worker_id,
            job_types,
            limit=limit,
            now=now,
            lease_seconds=lease_seconds,
            limits=limits,
            paces=paces,
            max_attempts=max_attempts,
        )

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
        return await self._db.write_redoable(
            work.finish_items,
            lease_id,
            items,
            message=message,
            final=final,
            now=now,
            retention=retention,
            abort=abort,
            later=later,
        )

    async def renew_leases(self, lease_ids: list[int], now: float, until: float) -> set[int]:
        """Extend the leases still held; a lapsed one is not revived."""
        if not lease_ids:
            return set()
        return await self._db.write_redoable(work.renew_leases, lease_ids, now, until)

    async def release_lease(self, lease_id: int, now: float) -> int:
        """Give back the unstarted items of a lease at once (a worker stopping cleanly)."""
        return await self._db.write_redoable(work.release_lease, lease_id, now)

    # -- cluster-wide chores ------------------------------------------------------------------

    async def requeue_expired(self, now: float, max_attempts: int, retention: float) -> int:
        """Return the items of lapsed leases to the queue; fail those out of attempts."""
        return await self._db.write_redoable(
            maintenance.requeue_expired, now, max_attempts, retention
        )

    async def lapsed_leases(self, now: float) -> list[LapsedLease]:
        """The leases requeue_expired would requeue at `now`, with their jobs and workers."""
        return await self._db.read(maintenance.lapsed_leases, now)

    async def purge_expired(self, now: float) -> int:
        """Delete jobs past their retention, and what dead submits loaded, in short steps
        (each its own call on the writer thread, so this process's other writes go between)."""
        jobs, loads = await self._db.read(maintenance.expired, now)
        for job_id in jobs:
            await self._in_steps(maintenance.purge_step, job_id)
        for job_id in loads:
            await self._abandon(job_id)
        return len(jobs)

    async def metric_counts(self, now: float) -> MetricCounts:
        """Counts of every job, live leases and the metric totals, in one read snapshot."""
        return await self._db.read(clients.read_metric_counts, now)

    async def try_lead(self, chore: str, holder: str, now: float, until: float) -> bool:
        """Take or keep the lead of a chore; one process per file holds it at a time."""
        return await self._db.write_redoable(maintenance.try_lead, chore, holder, now, until)

    # -- webhook deliveries -------------------------------------------------------------------
    # Attempts are redoable (a lost outcome means the event is sent again, with the same
    # webhook-id); a redelivery and a secret are answered to a client, so they are synced.

    async def claim_deliveries(
        self, *, limit: int, now: float, lease_seconds: float
    ) -> list[DueDelivery]:
        """Lease due deliveries for one attempt each."""
        return await self._db.write_redoable(
            webhooks.claim_deliveries, limit=limit, now=now, lease_seconds=lease_seconds
        )

    async def keep_delivery_body(self, delivery_id: str, body: bytes) -> bytes:
        """Store the event a delivery sends unless one is stored; return the stored one."""
        return await self._db.write_redoable(webhooks.keep_delivery_body, delivery_id, body)

    async def finish_delivery(self, outcome: AttemptOutcome, now: float) -> bool:
        """Record an attempt's answer; move the delivery on if its lease is still held."""
        return await self._db.write_redoable(webhooks.finish_delivery, outcome, now)

    async def list_deliveries(
        self, tenant: str, job_id: str, now: float
    ) -> list[DeliveryRow] | None:
        """A job's deliveries with their attempts; None if there is no such job."""
        return await self._db.read(webhooks.list_deliveries, tenant, job_id, now)

    async def redeliver(self, tenant: str, job_id: str, now: float) -> int | None:
        """Queue a new round of a job's deliveries, due now; None if there is no such job."""
        return await self._db.write(webhooks.redeliver, tenant, job_id, now)

    async def job_callback(
        self, tenant: str, job_id: str, now: float
    ) -> tuple[str, str | None] | None:
        """The job's callback_url and status base, if it has a callback."""
        return await self._db.read(webhooks.job_callback, tenant, job_id, now)

    async def webhook_secret(
        self, tenant: str, candidate: str, now: float, *, rotate: bool
    ) -> WebhookSecret:
        """The tenant's signing secret, created on first use (or rotated). Read on a reader
        thread: only a first use or a rotation waits for the writer."""
        if not rotate:
            found = await self._db.read(webhooks.find_secret, tenant)
            if found is not None:
                return found
        return await self._db.write(webhooks.webhook_secret, tenant, candidate, now, rotate=rotate)
