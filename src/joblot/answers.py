"""Reading a joblot server's answers: error bodies, JSON bodies, how long to wait and retry."""

from __future__ import annotations

from typing import Any

import httpx

from joblot.errors import ClientError

MAX_RETRY_AFTER = 60.0
THROTTLED = frozenset({429, 503})


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0-based) when the server named none."""
    return float(min(0.1 * 2**attempt, 5.0))


def retry_after(response: httpx.Response, attempt: int) -> float:
    """The wait a 429/503 asks for in `Retry-After` (integer seconds), capped at a minute."""
    raw = response.headers.get("retry-after", "").strip()
    if raw.isdigit():
        return min(float(raw), MAX_RETRY_AFTER)
    return backoff(attempt)


def error_from(response: httpx.Response) -> ClientError:
    """The ClientError for an error answer, JSON `{"error", "description"}` or not."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # Zendesk also answers {"error": {"title", "message"}}
        name, text = error.get("title"), error.get("message")
    else:
        name, text = error, body.get("description") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        name = response.reason_phrase or "HTTPError"
        text = text if isinstance(text, str) else response.text.strip()[:500]
    description = text if isinstance(text, str) else ""
    return ClientError(response.status_code, name, description)


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful answer; anything else is a ClientError."""
    if response.status_code >= 300:
        raise error_from(response)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ClientError(
            response.status_code,
            "InvalidResponse",
            f"expected a JSON object from {response.request.url}, got {response.text[:200]!r}",
        )
    return body
