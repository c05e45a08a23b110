"""When a webhook attempt is retried, and how it is signed and verified (no I/O)."""

from __future__ import annotations

import random
import time

import pytest

from joblot import WebhookVerificationError, verify_webhook
from joblot.config import Settings
from joblot.delivery import Answer, decide, retry_after_seconds, retry_delay, signing_secrets
from joblot.store import DueDelivery, WebhookSecret
from joblot.webhooks import new_secret, sign, signature_header

SETTINGS = Settings()
RAND = random.Random(7)


def due(round_attempt: int = 1) -> DueDelivery:
    return DueDelivery(
        id="msg_1",
        job_id="j",
        tenant="t",
        job_type="demo.echo",
        url="https://x.test/",
        type="job.completed",
        public_url=None,
        created_at=0.0,
        attempt=round_attempt,
        round_attempt=round_attempt,
        lease_token=1,
        body=None,
    )


def test_the_default_schedule_is_about_5s_1m_10m_1h_6h_24h_with_jitter() -> None:
    delays = [retry_delay(SETTINGS, n, None, RAND) for n in range(1, 8)]
    for delay, expected in zip(delays, [5, 60, 600, 3600, 21600, 86400, 86400], strict=True):
        assert expected * 0.8 <= delay <= expected * 1.2
    assert len({retry_delay(SETTINGS, 1, None, RAND) for _ in range(10)}) > 1  # jittered


def test_a_2xx_delivers_410_gives_up_and_the_eighth_failure_gives_up() -> None:
    assert decide(SETTINGS, due(), Answer(204, None), 0, RAND).state == "delivered"
    assert decide(SETTINGS, due(), Answer(410, "gone"), 0, RAND).state == "failed"
    retry = decide(SETTINGS, due(7), Answer(500, "boom"), 100.0, RAND)
    assert retry.state == "pending" and retry.next_attempt_at is not None
    assert decide(SETTINGS, due(8), Answer(None, "refused"), 0, RAND).state == "failed"
    for code in (301, 400, 404, 429, 503):
        assert decide(SETTINGS, due(), Answer(code, "x"), 0, RAND).state == "pending"


def test_retry_after_sets_the_delay_within_bounds() -> None:
    assert retry_delay(SETTINGS, 1, 120.0, RAND) == 120.0
    assert retry_delay(SETTINGS, 1, 0.0, RAND) == 5.0  # never sooner than the first delay
    assert retry_delay(SETTINGS, 1, 10**9, RAND) == 86400.0
    assert retry_after_seconds("30", 0) == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert retry_after_seconds("soon", 0) is None
    assert retry_after_seconds(None, 0) is None


def test_the_previous_secret_signs_only_for_the_overlap_after_a_rotation() -> None:
    rotated = WebhookSecret("whsec_new", "whsec_old", 1000.0)
    assert signing_secrets(rotated, 1000.0 + 10, 3600) == ["whsec_new", "whsec_old"]
    assert signing_secrets(rotated, 1000.0 + 3600, 3600) == ["whsec_new"]
    assert signing_secrets(WebhookSecret("whsec_a", None, None), 0, 3600) == ["whsec_a"]


def test_verify_webhook_checks_signature_timestamp_and_headers() -> None:
    secret, body, now = new_secret(), b'{"type": "job.completed"}', int(time.time())
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(now),
        "Webhook-Signature": signature_header([new_secret(), secret], "msg_1", now, body),
    }
    assert verify_webhook(secret, body, headers) == {"type": "job.completed"}
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(secret, body + b" ", headers)
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(secret, body, {**headers, "Webhook-Id": "msg_2"})
    with pytest.raises(WebhookVerificationError, match="too far"):
        verify_webhook(secret, body, headers, now=now + 301)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook(secret, body, {"webhook-id": "msg_1"})
    assert sign(secret, "msg_1", now, body).startswith("v1,")
