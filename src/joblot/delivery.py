"""Webhook delivery: sends the completion events that finishing jobs queued (the outbox).

Every joblot process runs a `Deliverer` beside its other work, on the same event loop but
in tasks of its own, so a slow or dead receiver ties up only a delivery slot, never a worker
or a request. Due deliveries are leased in the database for one attempt each, so with many
processes on many nodes one attempt is sent by one process; a process that dies mid-attempt
leaves a lease that lapses, and the attempt is made again (with the same `webhook-id`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from joblot import __version__, codec
from joblot.bodies import render_status
from joblot.config import DEFAULT_URL, Settings
from joblot.egress import http_client
from joblot.errors import JoblotError, RecordNotFound
from joblot.logs import job_event
from joblot.models import rfc3339
from joblot.service import Service
from joblot.store import AttemptOutcome, DueDelivery, WebhookSecret
from joblot.webhooks import signature_header

log = logging.getLogger("joblot.webhooks")

EXCERPT_BYTES = 256  # of a receiver's answer: read, and kept in the attempt's error, no more
JITTER = 0.2  # each retry delay is stretched or shrunk by up to this share
MAX_RETRY_AFTER = 86400.0  # a receiver asking for a longer wait is tried again after a day
INTERRUPTED = "the process stopped during this attempt; sent again"
INTERRUPTED_SECONDS = 2.0  # a stopping process waits this long to record that, at most


@dataclass(frozen=True)
class Answer:
    """What one attempt got: an HTTP status, or an error without one."""

    status_code: int | None
    error: str | None
    retry_after: float | None = None
    final: bool = False  # no attempt can succeed: give up at once


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """The wait a `Retry-After` header asks for (seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value[:9])
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


def retry_delay(
    settings: Settings, round_attempt: int, retry_after: float | None, rand: random.Random
) -> float:
    """Seconds until the next attempt after attempt `round_attempt` of a round failed: the
    receiver's `Retry-After` when it gave one (no sooner than the schedule's first delay, no
    later than a day), else the schedule's delay for this attempt, with jitter."""
    schedule = settings.webhook_retry_seconds
    if retry_after is not None:
        return min(max(retry_after, schedule[0]), MAX_RETRY_AFTER)
    delay = schedule[min(round_attempt, len(schedule)) - 1]
    return delay * rand.uniform(1 - JITTER, 1 + JITTER)


def decide(
    settings: Settings, due: DueDelivery, answer: Answer, now: float, rand: random.Random
) -> AttemptOutcome:
    """What follows an attempt: delivered on a 2xx, given up on a 410 or the last attempt of
    the round, else another attempt later."""
    code = answer.status_code
    state, next_at = "pending", None
    if code is not None and 200 <= code < 300:
        state = "delivered"
    elif code == 410 or answer.final or due.round_attempt >= settings.webhook_max_attempts:
        state = "failed"
    else:
        next_at = now + retry_delay(settings, due.round_attempt, answer.retry_after, rand)
    return AttemptOutcome(
        delivery_id=due.id,
        attempt=due.attempt,
        lease_token=due.lease_token,
        status_code=code,
        error=answer.error,
        state=state,
        next_attempt_at=next_at,
    )


def signing_secrets(secret: WebhookSecret, now: float, overlap: float) -> list[str]:
    """The secrets an attempt is signed with: the tenant's, and for `overlap` seconds after a
    rotation the one before it too."""
    recent = secret.rotated_at is not None and now - secret.rotated_at < overlap
    if secret.previous is not None and recent:
        return [secret.secret, secret.previous]
    return [secret.secret]


async def read_excerpt(response: httpx.Response) -> str:
    """The start of a receiver's answer as one line of text; the rest is never read."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= EXCERPT_BYTES:
            break
    text = data[:EXCERPT_BYTES].decode("utf-8", "replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def failure_text(code: int, excerpt: str) -> str:
    """The error of an attempt answered with a status other than 2xx."""
    text = f"the receiver answered {code}"
    if 300 <= code < 400:
        text += " (redirects are not followed)"
    return f"{text}: {excerpt}" if excerpt else text


class Deliverer:
    """Sends due webhook deliveries, a few at a time, until cancelled."""

    def __init__(self, service: Service, rand: random.Random | None = None) -> None:
        self.service = service
        self.settings = service.settings
        self.rand = rand or random.Random()
        self._running: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    async def run(self) -> None:
        """Claim and send due deliveries until cancelled; attempts in flight are abandoned
        then (their leases lapse and another process makes them again)."""
        try:
            while True:
                self.service.deliveries_due.clear()
                await self._claim()
                await self._wait()
        finally:
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)
            if self._http is not None:
                await self._http.aclose()

    async def _client(self) -> httpx.AsyncClient:
        """The HTTP client, made at the first delivery: loading the CA certificates takes
        long enough to stall a worker's event loop, so it is done on a thread."""
        if self._http is None:
            self._http = await asyncio.to_thread(
                http_client,
                allow_private=self.settings.webhook_allow_private,
                timeout=self.settings.webhook_timeout_seconds,
                user_agent=f"joblot-webhooks/{__version__}",
            )
        return self._http

    async def _claim(self) -> None:
        free = self.settings.webhook_concurrency - len(self._running)
        if free <= 0:
            return
        try:
            claimed = await self.service.claim_deliveries(free)
            http = await self._client() if claimed else None
        except JoblotError as exc:
            log.warning("could not claim webhook deliveries: %s", exc.description)
            return
        except Exception:  # a loop that dies silently would stop every delivery
            log.exception("claiming webhook deliveries failed unexpectedly")
            return
        for due in claimed:
            assert http is not None
            task = asyncio.create_task(self.attempt(http, due), name=f"joblot-webhook-{due.id}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait(self) -> None:
        """Until this process finished a job, an attempt ended, or the poll interval passed."""
        waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._due())}
        if self._running:
            waits.add(asyncio.ensure_future(asyncio.wait(self._running)))
        try:
            await asyncio.wait(
                waits,
                timeout=self.settings.webhook_poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _due(self) -> object:
        return await self.service.deliveries_due.wait()

    async def attempt(self, http: httpx.AsyncClient, due: DueDelivery) -> None:
        """Make one attempt of `due` and record how it went; never raises but a cancel."""
        try:
            answer = await self._send(http, due)
            outcome = decide(self.settings, due, answer, self.service.clock(), self.rand)
            await self.service.finish_delivery(outcome)
        except asyncio.CancelledError:
            await self._interrupted(due)
            raise
        except JoblotError as exc:  # e.g. the database: the lease lapses and it is retried
            log.warning("webhook attempt for job %s failed: %s", due.job_id, exc.description)
            return
        except Exception:
            log.exception("webhook attempt for job %s failed unexpectedly", due.job_id)
            return
        _log_outcome(due, outcome)

    async def _interrupted(self, due: DueDelivery) -> None:
        """The process is stopping mid-attempt: say so, and make the delivery due again at
        once rather than when its lease lapses (best effort: the lease covers a failure)."""
        outcome = AttemptOutcome(
            delivery_id=due.id,
            attempt=due.attempt,
            lease_token=due.lease_token,
            status_code=None,
            error=INTERRUPTED,
            state="pending",
            next_attempt_at=self.service.clock(),
        )
        try:
            async with asyncio.timeout(INTERRUPTED_SECONDS):
                await self.service.finish_delivery(outcome)
        except Exception as exc:  # stopping anyway: the lease will lapse instead
            log.info("could not record the interrupted webhook attempt %s: %s", due.id, exc)

    async def _send(self, http: httpx.AsyncClient, due: DueDelivery) -> Answer:
        try:
            body = due.body or await self._event(due)
        except RecordNotFound:
            return Answer(None, "the job was purged before its event could be built", final=True)
        now = self.service.clock()
        secret = await self.service.webhook_secret(due.tenant)
        secrets = signing_secrets(secret, now, self.settings.webhook_secret_overlap_seconds)
        headers = {
            "content-type": "application/json",
            "webhook-id": due.id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": signature_header(secrets, due.id, int(now), body),
        }
        return await self._post(http, due.url, body, headers)

    async def _event(self, due: DueDelivery) -> bytes:
        """The event, built from the finished job at the first attempt and kept for the rest."""
        row = await self.service.get_job(due.tenant, due.job_id)
        status = render_status(row, due.public_url or self.settings.public_url or DEFAULT_URL)
        event = {
            "type": due.type,
            "timestamp": rfc3339(due.created_at),
            "data": {"job_status": status},
        }
        return await self.service.keep_delivery_body(due.id, codec.dumps(event))

    async def _post(
        self, http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
    ) -> Answer:
        timeout = self.settings.webhook_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                async with http.stream("POST", url, content=body, headers=headers) as response:
                    code = response.status_code
                    if 200 <= code < 300:
                        return Answer(code, None)
                    excerpt = await read_excerpt(response)
        except TimeoutError:
            return Answer(None, f"no answer within {timeout:g} s")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}"[:500])
        wait = retry_after_seconds(response.headers.get("retry-after"), self.service.clock())
        return Answer(code, failure_text(code, excerpt), wait)


def _log_outcome(due: DueDelivery, outcome: AttemptOutcome) -> None:
    """One line per attempt; a delivered or given-up event is a job event (`joblot.logs`)."""
    answer = outcome.status_code if outcome.status_code is not None else outcome.error
    event, level = {
        "delivered": ("webhook_delivered", logging.INFO),
        "failed": ("webhook_given_up", logging.WARNING),
    }.get(outcome.state, ("webhook_attempt_failed", logging.INFO))
    # not the URL: it may carry credentials
    text = f"{due.type}, attempt {due.attempt}: {outcome.error or answer}"
    if outcome.state == "pending":
        text += "; retrying"
    job_event(
        log,
        event,
        text,
        job_id=due.job_id,
        job_type=due.job_type,
        tenant=due.tenant,
        level=level,
        webhook_id=due.id,
        attempt=due.attempt,
        status_code=outcome.status_code,
    )
