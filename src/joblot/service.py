"""The rules: submit, read, cancel, claim, finish, expire. Talks only to the store."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from joblot import codec
from joblot.app import App
from joblot.config import Settings
from joblot.egress import check_callback_url
from joblot.errors import (
    JobNotFinished,
    NoCallbackUrl,
    NothingToRetry,
    RecordNotFound,
    TooManyItems,
)
from joblot.logs import job_event
from joblot.models import new_job_id
from joblot.store import (
    ANY_JOB,
    NO_LIMITS,
    AttemptOutcome,
    Claim,
    DeliveryRow,
    DueDelivery,
    FinishedItem,
    FinishOutcome,
    JobFilter,
    JobRow,
    LapsedLease,
    MetricCounts,
    NewJob,
    Pace,
    Page,
    RetryLater,
    Store,
    TokenCount,
    TypeLimits,
    WebhookSecret,
)
from joblot.submission import build_job, item_count, job_type_named
from joblot.webhooks import new_secret

log = logging.getLogger("joblot.service")

EXPORT_PAGE = 1000  # result entries read at a time by an export


def _nothing_to_retry(source: JobRow) -> str:
    if source.failures:  # failures recorded before items were kept for retries
        return (
            f"the {source.failures} failed items of job {source.id} finished before this "
            "server kept failed items for retries; submit them again as a new job"
        )
    return f"no item of job {source.id} failed: there is nothing to retry"


OFFLOAD_ITEMS = 2000  # submissions larger than this are validated and encoded in a thread


class Service:
    """Everything a client or worker can do to jobs, with the lifecycle rules applied."""

    def __init__(
        self, store: Store, app: App, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.app = app
        self.settings = settings
        self.clock = clock
        # Set when this process finished or stopped a job: its webhook event may be due now.
        self.deliveries_due = asyncio.Event()

    # -- clients ----------------------------------------------------------------------------

    async def submit_job(
        self,
        tenant: str,
        doc: Any,
        idempotency_key: str | None = None,
        *,
        public_url: str | None = None,
    ) -> tuple[JobRow, bool]:
        """Validate and store a job; a retry with the same key returns the same job.
        `public_url` is the base of JobStatus urls (that its completion event carries)."""
        build = functools.partial(self._build, tenant, doc, idempotency_key, public_url)
        if item_count(doc) > OFFLOAD_ITEMS:  # keep the event loop answering other requests
            job = await asyncio.to_thread(build)
        else:
            job = build()
        if job.callback_url is not None:
            allow = self.settings.webhook_allow_private
            await check_callback_url(job.callback_url, allow_private=allow)
        return await self._store_job(job)

    async def retry_job(
        self, tenant: str, job_id: str, idempotency_key: str | None = None
    ) -> tuple[JobRow, bool]:
        """Queue a new job of the failed items of a finished job, as they were submitted, in
        index order; a retry with the same key returns the same new job."""
        now = self.clock()
        source = await self.store.get_job(tenant, job_id, now, 0)
        if source is None:
            raise RecordNotFound.for_job(job_id)
        if not source.status.finished:
            raise JobNotFinished(
                f"job {job_id} is still {source.status.value}; retry its failed items once it "
                "has completed or failed (or cancel it first)"
            )
        payloads = await self.store.failed_items(tenant, job_id, now)
        if payloads is None:
            raise RecordNotFound.for_job(job_id)
        if not payloads:
            raise NothingToRetry(_nothing_to_retry(source))
        job_type = job_type_named(source.job_type, self.app)
        if len(payloads) > self.settings.max_items:
            raise TooManyItems(
                f"job {job_id} has {len(payloads)} failed items, more than the "
                f"{self.settings.max_items} a job may have"
            )
        # The retry reports to the callback of the job it retries, if that had one.
        callback, public_url = await self.store.job_callback(tenant, job_id, now) or (None, None)
        retry = NewJob(
            id=new_job_id(now),
            tenant=tenant,
            job_type=job_type.name,
            action=job_type.action,
            max_failures=job_type.max_failures,
            payloads=payloads,
            created_at=now,
            idempotency_key=idempotency_key,
            request_hash=None if idempotency_key is None else f"retry:{job_id}",
            max_active_jobs=self.settings.max_active_jobs,
            message=f"Retrying the {len(payloads)} failed items of job {job_id}",
            callback_url=callback,
            public_url=public_url,
        )
        return await self._store_job(retry, f"retries the failed items of job {job_id}")

    async def _store_job(self, job: NewJob, note: str = "") -> tuple[JobRow, bool]:
        """Store a new job (every submit goes through here); with a known idempotency key,
        the job that key made, as it is now."""
        row, created = await self.store.submit_job(job)
        if not created:  # a replay answers with the job as it is now
            return await self.get_job(job.tenant, row.id), created
        job_event(
            log,
            "submitted",
            f"{row.total} items" + (f"; {note}" if note else ""),
            job_id=row.id,
            job_type=row.job_type,
            tenant=job.tenant,
            total=row.total,
        )
        return row, created

    def _build(
        self, tenant: str, doc: Any, idempotency_key: str | None, public_url: str | None
    ) -> NewJob:
        return build_job(
            self.app,
            tenant,
            doc,
            self.settings.max_items,
            self.clock(),
            idempotency_key=idempotency_key,
            max_active_jobs=self.settings.max_active_jobs,
            public_url=public_url or self.settings.public_url,
        )

    async def get_job(self, tenant: str, job_id: str) -> JobRow:
        """The job, or RecordNotFound."""
        row = await self.store.get_job(tenant, job_id, self.clock(), self.settings.inline_results)
        if row is None:
            raise RecordNotFound.for_job(job_id)
        return row

    async def get_jobs(self, tenant: str, job_ids: list[str]) -> list[JobRow]:
        """The jobs that exist among `job_ids`."""
        return await self.store.get_jobs(
            tenant, job_ids, self.clock(), self.settings.inline_results
        )

    async def list_jobs(
        self,
        tenant: str,
        after: str | None,
        before: str | None,
        size: int,
        *,
        where: JobFilter = ANY_JOB,
    ) -> Page[JobRow]:
        """A page of the jobs `where` lets through: unfinished first, then finished ones,
        newest first."""
        return await self.store.list_jobs(
            tenant,
            now=self.clock(),
            after=after,
            before=before,
            size=size,
            inline=self.settings.inline_results,
            where=where,
        )

    async def list_results(
        self,
        tenant: str,
        job_id: str,
        after: int | None,
        before: int | None,
        size: int,
        *,
        success: bool | None = None,
    ) -> Page[tuple[int, bytes]]:
        """A page of a job's result entries by index (only the failed or the succeeded ones
        if `success` says which), or RecordNotFound."""
        page = await self.store.list_results(
            tenant, job_id, now=self.clock(), after=after, before=before, size=size, success=success
        )
        if page is None:
            raise RecordNotFound.for_job(job_id)
        return page

    async def result_pages(
        self, tenant: str, job_id: str, *, success: bool | None = None, size: int = EXPORT_PAGE
    ) -> AsyncIterator[list[bytes]]:
        """Every result entry of a job (or only the failed or succeeded ones), in index order,
        `size` at a time: one bounded read each, so memory does not grow with the job. Ends
        early if the job is purged meanwhile."""
        after: int | None = None
        while True:
            page = await self.store.export_results(
                tenant, job_id, now=self.clock(), after=after, size=size, success=success
            )
            if page is None or not page.rows:
                return
            yield [entry for _, entry in page.rows]
            if not page.has_more:
                return
            after = page.rows[-1][0]

    async def job_version(self, tenant: str, job_id: str) -> int:
        """The job's change counter, or RecordNotFound."""
        version = await self.store.job_version(tenant, job_id, self.clock())
        if version is None:
            raise RecordNotFound.for_job(job_id)
        return version

    async def job_expiry(self, tenant: str, job_id: str) -> float | None:
        """When the job expires (None: unfinished, or no such job)."""
        return await self.store.job_expiry(tenant, job_id, self.clock())

    async def cancel_job(self, tenant: str, job_id: str) -> JobRow:
        """Stop a job; items not yet started never run."""
        stopped = await self.store.stop_job(
            tenant,
            job_id,
            message=None,
            now=self.clock(),
            retention=self.settings.retention_seconds,
        )
        if not stopped:
            raise RecordNotFound.for_job(job_id)
        self.deliveries_due.set()
        row = await self.get_job(tenant, job_id)
        job_event(
            log,
            "cancelled",
            row.message or "",
            job_id=row.id,
            job_type=row.job_type,
            tenant=tenant,
            progress=row.progress,
        )
        return row

    async def list_deliveries(self, tenant: str, job_id: str) -> list[DeliveryRow]:
        """A job's webhook deliveries with every attempt, or RecordNotFound."""
        rows = await self.store.list_deliveries(tenant, job_id, self.clock())
        if rows is None:
            raise RecordNotFound.for_job(job_id)
        return rows

    async def redeliver(self, tenant: str, job_id: str) -> list[DeliveryRow]:
        """Queue a new round of attempts of a finished job's webhook event, due now."""
        queued = await self.store.redeliver(tenant, job_id, self.clock())
        if queued is None:
            raise RecordNotFound.for_job(job_id)
        if queued == 0:
            row = await self.get_job(tenant, job_id)
            if not row.status.finished:
                raise JobNotFinished(
                    f"job {job_id} is still {row.status.value}; its event is sent when it "
                    "finishes, and can be sent again after that"
                )
            raise NoCallbackUrl(
                f"job {job_id} was submitted without a callback_url, so it has no deliveries"
            )
        self.deliveries_due.set()
        return await self.list_deliveries(tenant, job_id)

    async def webhook_secret(self, tenant: str, *, rotate: bool = False) -> WebhookSecret:
        """The tenant's webhook signing secret, created on first use; `rotate` replaces it."""
        return await self.store.webhook_secret(tenant, new_secret(), self.clock(), rotate=rotate)

    async def find_token(self, digest: str) -> tuple[str, str] | None:
        """(token id, tenant) of the live token with this digest."""
        return await self.store.find_token(digest)

    async def count_tokens(self) -> TokenCount:
        """How many live and how many revoked tokens there are."""
        return await self.store.count_tokens()

    async def metric_counts(self) -> MetricCounts:
        """What the metrics read from the database: counts of every job, live leases, and the
        totals kept for purged jobs and lapsed leases."""
        return await self.store.metric_counts(self.clock())

    async def live_tokens(self, token_ids: list[str]) -> set[str]:
        """The ids among `token_ids` of live tokens."""
        return await self.store.live_tokens(token_ids)

    async def schema_version(self) -> tuple[int, int]:
        """(applied, latest) migration numbers: answers only while the database does."""
        return await self.store.schema_version()

    # -- workers and maintenance ------------------------------------------------------------

    async def claim_items(
        self,
        worker_id: str,
        job_types: list[str],
        limit: int,
        *,
        limits: TypeLimits = NO_LIMITS,
        paces: Mapping[str, Pace] | None = None,
    ) -> Claim | None:
        """Lease a batch of items, round-robin across jobs, within their types' `limits`,
        sized by their types' `paces`."""
        claim = await self.store.claim_items(
            worker_id,
            job_types,
            limit=limit,
            now=self.clock(),
            lease_seconds=self.settings.lease_seconds,
            limits=limits,
            paces=paces,
            max_attempts=self.settings.max_attempts,
        )
        if claim is not None and claim.started:
            job_event(
                log,
                "started",
                f"by worker {worker_id}",
                job_id=claim.job_id,
                job_type=claim.job_type,
                tenant=claim.tenant,
                worker=worker_id,
            )
        return claim

    async def finish_items(
        self,
        lease_id: int,
        items: list[FinishedItem],
        *,
        message: str | None,
        final: bool,
        abort: str | None = None,
        later: Sequence[RetryLater] = (),
    ) -> FinishOutcome:
        """Record results under a lease; refused if the lease lapsed. With `abort`, a handler
        stopped the whole job: it fails with that message in the same transaction. The items
        `later` go back to the queue until their delays have passed. Messages are made
        storable first (no NUL, no lone surrogate: see `joblot.codec`)."""
        outcome = await self.store.finish_items(
            lease_id,
            items,
            message=None if message is None else codec.storable_text(message),
            final=final,
            now=self.clock(),
            retention=self.settings.retention_seconds,
            abort=None if abort is None else codec.storable_text(abort),
            later=later,
        )
        if outcome.status is not None and outcome.status.finished:
            self.deliveries_due.set()  # its webhook event may be waiting: send it now
        return outcome

    async def claim_deliveries(self, limit: int) -> list[DueDelivery]:
        """Lease due webhook deliveries for one attempt each; the lease outlasts an attempt."""
        return await self.store.claim_deliveries(
            limit=limit,
            now=self.clock(),
            lease_seconds=2 * self.settings.webhook_timeout_seconds,
        )

    async def keep_delivery_body(self, delivery_id: str, body: bytes) -> bytes:
        """The event a delivery sends: `body`, unless an earlier attempt stored one."""
        return await self.store.keep_delivery_body(delivery_id, body)

    async def finish_delivery(self, outcome: AttemptOutcome) -> bool:
        """Record an attempt's outcome; False if the delivery's lease was lost meanwhile."""
        return await self.store.finish_delivery(outcome, self.clock())

    async def renew_leases(self, lease_ids: list[int]) -> set[int]:
        """Extend held leases by one lease length; return those still held."""
        now = self.clock()
        return await self.store.renew_leases(lease_ids, now, now + self.settings.lease_seconds)

    async def release_lease(self, lease_id: int) -> int:
        """Hand back the unstarted items of a lease (a worker stopping cleanly)."""
        return await self.store.release_lease(lease_id, self.clock())

    async def lapsed_leases(self) -> list[LapsedLease]:
        """The leases `requeue_expired` would requeue now, with their jobs and workers."""
        return await self.store.lapsed_leases(self.clock())

    async def requeue_expired(self) -> int:
        """Return items of dead workers to the queue."""
        count = await self.store.requeue_expired(
            self.clock(), self.settings.max_attempts, self.settings.retention_seconds
        )
        if count:
            self.deliveries_due.set()  # items that ran out of attempts may have ended a job
        return count

    async def wait_for_work(self, timeout: float) -> None:
        """Sleep until new work may be there (woken early where the backend can notify)."""
        await self.store.wait_for_work(timeout)

    async def purge_expired(self) -> int:
        """Delete finished jobs past their retention."""
        return await self.store.purge_expired(self.clock())

    async def try_lead(self, chore: str, holder: str, seconds: float) -> bool:
        """Take or keep the lead of a cluster-wide chore for `seconds`; False if another
        process holds it."""
        now = self.clock()
        return await self.store.try_lead(chore, holder, now, now + seconds)
