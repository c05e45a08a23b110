"""What a worker's batches produced, recorded in the database: results, messages, items to
retry later, and the end of each batch.

What a handler produced must never wedge its job, even when the database refuses it: the
report is tried again without the message, then item by item, and a result refused on its own
is recorded as a plain failure (`UnstorableResult`). Each refusal that costs something (a
message, a result) is logged once, with the job id and the item's index. A batch is always
concluded: its lease is released, or left to lapse so that its items run again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from joblot import codec
from joblot.batch import Batch, failure, ident_of
from joblot.errors import JoblotError
from joblot.logs import job_event
from joblot.service import Service
from joblot.store import Claim, FinishedItem, FinishOutcome, RetryLater

log = logging.getLogger("joblot.worker")


class Reporter:
    """Reports a worker's batches; `on_job_stopped(job_id)` hears of jobs that stopped."""

    def __init__(
        self, service: Service, worker_id: str, on_job_stopped: Callable[[str], None]
    ) -> None:
        self.service = service
        self.worker_id = worker_id
        self.on_job_stopped = on_job_stopped

    async def flush(self, batch: Batch, *, final: bool, abort: str | None = None) -> None:
        """Report what the batch gathered since the last flush (with `final`, its last)."""
        done, message, later = batch.take()
        if not done and message is None and not later and not final:
            return
        outcome = await self._report(batch, done, message, later, final=final, abort=abort)
        if outcome is None:
            batch.stopped = True  # the lease lapses and the unreported items run again
        elif not outcome.accepted:
            log.warning(
                "lease %d of job %s lapsed or was revoked; %d results refused",
                batch.claim.lease_id,
                batch.claim.job_id,
                len(done),
            )
            batch.stopped = True
        elif outcome.status is not None and outcome.status.finished:
            self.on_job_stopped(batch.claim.job_id)  # cancelled, aborted or over threshold
            if outcome.finished:
                self._log_finished(batch.claim, outcome.status.value)

    async def conclude(self, batch: Batch) -> None:
        """Report the last results (with an abort, the job fails in the same transaction) and
        hand back the items without a result: never started, or given up on while stopping.

        Never raises: the lease is released, or left to lapse so that its items run again."""
        try:
            if batch.aborted is not None:
                batch.done.extend(batch.take_aborted())
                log.info(
                    "job %s aborted by its handler: %s",
                    batch.claim.job_id,
                    batch.aborted,
                    extra=log_fields(batch),
                )
            await self.flush(batch, final=batch.leftover == 0, abort=batch.aborted)
            if batch.leftover:
                await self.service.release_lease(batch.claim.lease_id)
        except JoblotError as exc:
            log.warning(
                "could not conclude the batch of job %s (lease %d): %s",
                batch.claim.job_id,
                batch.claim.lease_id,
                exc.description,
            )
        except Exception:
            log.exception(
                "could not conclude the batch of job %s (lease %d)",
                batch.claim.job_id,
                batch.claim.lease_id,
            )

    async def _report(
        self,
        batch: Batch,
        done: list[FinishedItem],
        message: str | None,
        later: list[RetryLater],
        *,
        final: bool,
        abort: str | None,
    ) -> FinishOutcome | None:
        """Record results, the message and the items to retry later; None if that cannot be
        done now."""
        report = functools.partial(self._finish, batch, final=final, abort=abort)
        try:
            return await report(done, message, later)
        except _Refused as refused:
            if message is not None:
                with contextlib.suppress(_Refused):
                    outcome = await report(done, None, later)
                    log.error(
                        "job %s: the database refused the message a handler reported; the "
                        "results were recorded without it",
                        batch.claim.job_id,
                        exc_info=refused.__cause__,
                        extra=log_fields(batch),
                    )
                    return outcome
            log.info(
                "job %s: the database refused the results of items [%s]; reporting them one by one",
                batch.claim.job_id,
                _indexes(done),
            )
        return await self._one_by_one(batch, done, later, report)

    async def _one_by_one(
        self,
        batch: Batch,
        done: list[FinishedItem],
        later: list[RetryLater],
        report: Callable[..., Any],
    ) -> FinishOutcome | None:
        """Each result on its own; one the database refuses becomes `UnstorableResult`."""
        outcome: FinishOutcome | None = FinishOutcome(accepted=True)
        if later:
            with contextlib.suppress(_Refused):
                outcome = await report([], None, later)
            if outcome is None or not outcome.accepted:
                return outcome
        for finished in done:
            try:
                outcome = await report([finished], None)
            except _Refused as refused:
                log.error(
                    "job %s item %d: the database refused its result; recording UnstorableResult",
                    batch.claim.job_id,
                    finished.index,
                    exc_info=refused.__cause__,
                    extra=log_fields(batch),
                )
                with contextlib.suppress(_Refused):
                    outcome = await report([_unstorable(batch, finished)], None)
            if outcome is None or not outcome.accepted:
                break
        return outcome

    async def _finish(
        self,
        batch: Batch,
        results: list[FinishedItem],
        message: str | None,
        later: list[RetryLater] | None = None,
        *,
        final: bool,
        abort: str | None,
    ) -> FinishOutcome | None:
        """`finish_items`; None when the database cannot be reached (the lease then lapses and
        the items run again), _Refused when it refused what it was given (the caller logs)."""
        try:
            return await self.service.finish_items(
                batch.claim.lease_id,
                results,
                message=message,
                final=final,
                abort=abort,
                later=later or (),
            )
        except JoblotError as exc:
            log.warning(
                "could not report %d results of job %s: %s",
                len(results),
                batch.claim.job_id,
                exc.description,
            )
            return None
        except Exception as exc:
            raise _Refused() from exc

    def _log_finished(self, claim: Claim, status: str) -> None:
        job_event(
            log,
            "finished",
            status,
            job_id=claim.job_id,
            job_type=claim.job_type,
            tenant=claim.tenant,
            status=status,
            worker=self.worker_id,
        )


class _Refused(Exception):
    """The database refused results or a message (its error is the `__cause__`)."""


def log_fields(batch: Batch) -> dict[str, str]:
    """The ids a log line about a batch carries as fields (for JSON logs)."""
    claim = batch.claim
    return {"job_id": claim.job_id, "job_type": claim.job_type, "tenant": claim.tenant}


def _indexes(results: list[FinishedItem]) -> str:
    shown = ", ".join(str(it.index) for it in results[:20])
    return shown + (f" and {len(results) - 20} more" if len(results) > 20 else "")


def _unstorable(batch: Batch, finished: FinishedItem) -> FinishedItem:
    """A plain failed entry in place of a result the database refused."""
    ident: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        ident = ident_of(codec.decode_item(finished.entry))
    details = "the database refused this item's result; see the worker's log"
    return failure(batch.job_type, finished.index, ident, "UnstorableResult", details)
