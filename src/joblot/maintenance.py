"""Cluster-wide chores — requeue the items of lapsed leases, purge expired jobs — run by one
process of the cluster at a time.

Every joblot process (API node or worker) runs a `Maintenance` loop, but only the holder of
the `maintenance` lead in the database does the chores; the others just try to take the
lead each round. When the holder dies, its lead lapses after `lease_seconds`, the same time
its item leases take, and the next process to try takes over. So with N processes there is
one requeue scan per round, not N, and a deployment without workers still purges.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from joblot.errors import JoblotError, RecordNotFound
from joblot.logs import job_event
from joblot.service import Service
from joblot.store import LapsedLease

log = logging.getLogger("joblot.maintenance")

CHORE = "maintenance"
PURGE_SECONDS = 60.0  # how often the leader deletes jobs past their retention


class Maintenance:
    """Takes the lead when it can and, while holding it, requeues and purges."""

    def __init__(self, service: Service, holder: str | None = None) -> None:
        self.service = service
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        lease = service.settings.lease_seconds
        self.interval = max(0.2, lease / 2)  # requeues happen within half a lease of lapsing
        self.lead_seconds = lease  # a dead leader's lead lapses with its item leases
        self.leading = False
        self._last_purge: float | None = None

    async def run(self) -> None:
        """Do a round every `interval` until cancelled; a failed round is logged, not fatal."""
        while True:
            try:
                await self.round()
            except JoblotError as exc:
                log.warning("maintenance round failed: %s", exc.description)
            except Exception:  # a loop that dies silently would stop requeues for good
                log.exception("maintenance round failed unexpectedly")
            await asyncio.sleep(self.interval)

    async def _log_lost(self, lease: LapsedLease) -> None:
        """One line for a worker that lost a lease, and one more if that ended its job (its
        last items ran out of attempts)."""
        job_event(
            log,
            "worker_lost",
            f"worker {lease.worker_id} stopped renewing lease {lease.lease_id} "
            f"({lease.items} items); its items go back to the queue or fail with WorkerLost",
            level=logging.WARNING,
            worker=lease.worker_id,
            lease_id=lease.lease_id,
            job_id=lease.job_id,
            job_type=lease.job_type,
            tenant=lease.tenant,
        )
        if lease.job_status.finished:
            return
        try:
            row = await self.service.get_job(lease.tenant, lease.job_id)
        except RecordNotFound:
            return
        if row.status.finished:
            job_event(
                log,
                "finished",
                row.status.value,
                status=row.status.value,
                job_id=lease.job_id,
                job_type=lease.job_type,
                tenant=lease.tenant,
            )

    async def round(self) -> None:
        """Take or keep the lead; while leading, requeue lapsed leases and purge when due."""
        leading = await self.service.try_lead(CHORE, self.holder, self.lead_seconds)
        if leading != self.leading:
            log.info("%s the maintenance lead", "took" if leading else "lost")
            self.leading = leading
        if not leading:
            return
        lapsed = await self.service.lapsed_leases()
        requeued = await self.service.requeue_expired()
        if requeued:
            log.info("returned %d items of lapsed leases to the queue", requeued)
        for lease in lapsed:
            await self._log_lost(lease)
        now = self.service.clock()
        if self._last_purge is None or now - self._last_purge >= PURGE_SECONDS:
            self._last_purge = now
            purged = await self.service.purge_expired()
            if purged:
                log.info("purged %d jobs past their retention", purged)
