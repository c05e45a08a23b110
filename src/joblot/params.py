"""Reading requests: path ids, page parameters, cursors, JSON bodies, HTTP preferences, and
who an authenticated request acts for."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request

from joblot.auth import Caller
from joblot.errors import (
    InvalidJSON,
    InvalidParameter,
    PayloadTooLarge,
    RecordNotFound,
    UnsupportedMediaType,
)
from joblot.models import MAX_JOB_TYPE_LENGTH, MAX_PAGE_SIZE, Status
from joblot.service import Service
from joblot.store import ANY_JOB, JobFilter

MAX_WAIT_SECONDS = 60
OFFLOAD_BYTES = 256 * 1024
JOB_ID = re.compile(r"[0-9a-f]{32}")
LIST_KEY = re.compile(r"[01][0-9]{16}(?:[0-9]{16})?[0-9a-f]{32}")
INDEX = re.compile(r"\d{1,12}")
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*(\d{1,6})(?:$|[;,\s])")


def job_id_param(request: Request) -> str:
    """The `{id}` path parameter without its `.json` suffix; malformed ids are simply not found."""
    raw = str(request.path_params["id"]).removesuffix(".json")
    if not JOB_ID.fullmatch(raw):
        raise RecordNotFound.for_job(raw)
    return raw


def whole_number(text: str) -> int | None:
    """`text` as a whole number when it is ASCII digits, else None. (`str.isdigit()` alone
    also passes "²", which int() refuses, and int() refuses more than 4300 digits.)"""
    if not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else sys.maxsize


@dataclass(frozen=True)
class PageRequest:
    """What a paginated request asks for: a cursor (at most one), a page size, and the other
    query parameters (filters) that the `next`/`prev` links keep."""

    after: str | None
    before: str | None
    size: int
    keep: dict[str, str] = field(default_factory=dict)


def page_params(request: Request, keep: dict[str, str] | None = None) -> PageRequest:
    """`page[after]`, `page[before]` and `page[size]` (1 to 100, default 100)."""
    query = request.query_params
    raw_size = query.get("page[size]")
    size = MAX_PAGE_SIZE
    if raw_size is not None:
        number = whole_number(raw_size)
        if number is None or not 1 <= number <= MAX_PAGE_SIZE:
            raise InvalidParameter(f"page[size] must be a whole number from 1 to {MAX_PAGE_SIZE}")
        size = number
    after, before = query.get("page[after]"), query.get("page[before]")
    if after is not None and before is not None:
        raise InvalidParameter("give page[after] or page[before], not both")
    return PageRequest(after, before, size, keep or {})


_STATUS_NAMES = ", ".join(s.value for s in Status)
_STATUS_VALUES = frozenset(s.value for s in Status)


def job_filter(request: Request) -> tuple[JobFilter, dict[str, str]]:
    """`status=a,b` (one or a comma list; commas plain or %2C) and `job_type=NAME` (exact) of a
    job listing, and the same as query parameters for the links of its pages."""
    query = request.query_params
    raw_status, job_type = query.get("status"), query.get("job_type")
    if raw_status is None and job_type is None:
        return ANY_JOB, {}
    keep: dict[str, str] = {}
    statuses = None
    if raw_status is not None:
        names = {n.strip() for n in raw_status.split(",") if n.strip()}
        unknown = sorted(names - _STATUS_VALUES)
        if unknown or not names:
            shown = ", ".join(repr(n[:50]) for n in unknown[:5]) or "nothing"
            raise InvalidParameter(f"status must be one or more of {_STATUS_NAMES}; got {shown}")
        statuses = frozenset(Status(n) for n in names)
        keep["status"] = ",".join(s.value for s in Status if s in statuses)
    if job_type is not None:
        if not 1 <= len(job_type) <= MAX_JOB_TYPE_LENGTH:
            raise InvalidParameter(
                f"job_type must be a job type's name, 1 to {MAX_JOB_TYPE_LENGTH} characters"
            )
        keep["job_type"] = job_type
    return JobFilter(statuses=statuses, job_type=job_type), keep


def success_filter(request: Request) -> tuple[bool | None, dict[str, str]]:
    """`success=false` (only failed entries) or `success=true` (only succeeded ones), and the
    same as a query parameter for the links of the pages."""
    raw = request.query_params.get("success")
    if raw is None:
        return None, {}
    if raw not in ("true", "false"):
        raise InvalidParameter(f"success must be true or false, not {raw[:50]!r}")
    return raw == "true", {"success": raw}


def encode_cursor(value: str) -> str:
    """An opaque, URL-safe cursor."""
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, pattern: re.Pattern[str]) -> str | None:
    """The value inside a cursor made by `encode_cursor`, or InvalidParameter."""
    if cursor is None:
        return None
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        value = ""
    if len(cursor) > 200 or not pattern.fullmatch(value):
        raise InvalidParameter(
            "page[after] / page[before] is not a cursor this server made; "
            "use the cursors from meta or links"
        )
    return value


async def read_json_body(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing more than `limit` bytes before reading them all."""
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type.lower():
        raise UnsupportedMediaType(
            f"send the job as JSON (Content-Type: application/json), not {content_type[:100]!r}"
        )
    declared = request.headers.get("content-length")
    too_large = PayloadTooLarge(
        f"the body is larger than {limit} bytes; split the items into several jobs"
    )
    declared_size = None if declared is None else whole_number(declared)
    if declared_size is not None and declared_size > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        if len(body) > OFFLOAD_BYTES:  # a big body is parsed without stalling other requests
            return await asyncio.to_thread(orjson.loads, body)
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None


def prefer_wait(request: Request) -> float:
    """Seconds asked for by `Prefer: wait=N` (RFC 7240), capped; 0 when absent."""
    match = _PREFER_WAIT.search(request.headers.get("prefer", ""))
    return min(int(match[1]), MAX_WAIT_SECONDS) if match else 0.0


def tags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header, weak ones compared as strong."""
    return {t.strip().removeprefix("W/") for t in header.split(",")}


# -- what authentication and configuration left on a request -----------------------------


def base_url(request: Request, service: Service) -> str:
    """The absolute base of JobStatus urls: the configured public URL, else this request's."""
    configured = service.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


def tenant_of(request: Request) -> str:
    """The tenant an authenticated request acts for (set by `Routes.authenticated`)."""
    tenant: str = request.state.tenant
    return tenant


def caller_of(request: Request) -> Caller:
    """Who an authenticated request acts for: tenant and token (set by `Routes.authenticated`)."""
    caller: Caller = request.state.caller
    return caller
