"""Standard Webhooks signatures: how joblot signs its completion events, and how a receiver
checks them.

A receiver needs only `verify_webhook` (or any Standard Webhooks library):

```python
from joblot import WebhookVerificationError, verify_webhook

def receive(body: bytes, headers: Mapping[str, str]) -> None:
    try:
        event = verify_webhook(SECRET, body, headers)   # SECRET: `joblot webhooks secret`
    except WebhookVerificationError:
        return 400                                      # not from joblot, or replayed late
    if already_handled(headers["webhook-id"]):          # retries carry the same id
        return 200
    status = event["data"]["job_status"]                # the finished JobStatus
```
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from typing import Any

import orjson

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
TOLERANCE_SECONDS = 300  # a delivery signed longer ago (or ahead) than this is refused


class WebhookVerificationError(ValueError):
    """A delivery whose signature, id or timestamp does not check out."""


def new_secret() -> str:
    """A fresh signing secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not `whsec_` followed by base64") from None
    if not key:
        raise WebhookVerificationError("the secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` under `secret`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per secret, separated by spaces (during
    a rotation, one under the new secret and one under the old)."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def verify_webhook(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """The decoded event of a delivery signed with `secret`, after checking its
    `webhook-id`, `webhook-timestamp` (within `tolerance` seconds of now) and
    `webhook-signature`; WebhookVerificationError otherwise. `body` is the raw request body."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    given = lowered.get("webhook-signature", "")
    if not (msg_id and stamp and given):
        raise WebhookVerificationError("webhook-id, webhook-timestamp or webhook-signature missing")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds")
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too far from now: a replay?")
    expected = sign(secret, msg_id, int(stamp), body).encode()
    if not any(hmac.compare_digest(expected, s.encode()) for s in given.split(" ")):
        raise WebhookVerificationError("no signature matches this secret")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WebhookVerificationError(f"the body is not JSON: {exc}") from None
