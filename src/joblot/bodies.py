"""The JSON bodies the API answers with: a JobStatus and its `job_stats`, lists of them,
cursor pages, and errors. Every body that carries a JobStatus is made here, so what travels
beside it is added in one place."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response

from joblot.errors import JoblotError
from joblot.models import Status, rfc3339, status_url
from joblot.params import PageRequest, encode_cursor
from joblot.store import DeliveryRow, JobRow


class JSONResponse(Response):
    """A JSON response encoded with orjson (fast, and it keeps key order)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: JoblotError, headers: dict[str, str] | None = None) -> Response:
    """The JSON body every error has: `{"error": name, "description": text}`."""
    body = {"error": exc.name, "description": exc.description}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def render_status(row: JobRow, base: str) -> dict[str, Any]:
    """A JobStatus: eight keys in Zendesk's order, nulls written out."""
    queued = row.status is Status.QUEUED
    results = None
    if row.results is not None:
        results = orjson.Fragment(b"[" + b",".join(row.results) + b"]")
    return {
        "id": row.id,
        "job_type": row.job_type,
        "url": status_url(base, row.id),
        "total": row.total,
        "progress": None if queued else row.progress,
        "status": row.status.value,
        "message": None if queued else row.message,
        "results": results,
    }


def render_stats(row: JobRow) -> dict[str, Any]:
    """The `job_stats` beside a JobStatus: what the eight keys leave out."""
    return {
        "failures": row.failures,
        "created_at": rfc3339(row.created_at),
        "started_at": None if row.started_at is None else rfc3339(row.started_at),
        "updated_at": rfc3339(row.updated_at),
        "finished_at": None if row.finished_at is None else rfc3339(row.finished_at),
    }


def status_body(row: JobRow, base: str) -> dict[str, Any]:
    """Every body that carries one JobStatus: `{"job_status": {...}, "job_stats": {...}}`."""
    return {"job_status": render_status(row, base), "job_stats": render_stats(row)}


def statuses_body(rows: list[JobRow], base: str) -> dict[str, Any]:
    """Every body that carries several: `job_statuses` and their `job_stats` by id."""
    return {
        "job_statuses": [render_status(r, base) for r in rows],
        "job_stats": {r.id: render_stats(r) for r in rows},
    }


def etag(job_id: str, version: int) -> str:
    """A strong validator that changes whenever anything in the status changes."""
    return f'"{job_id}.{version}"'


def page_body(
    request: Request,
    page: PageRequest,
    entries: dict[str, Any],
    *,
    cursors: list[str],
    has_more: bool,
    base: str,
) -> dict[str, Any]:
    """A Zendesk cursor-paginated body: the `entries` (one or more keys), `meta` and `links`;
    the links keep the request's filters."""
    went_back, started_after = page.before is not None, page.after is not None
    after_cursor = encode_cursor(cursors[-1]) if cursors else None
    before_cursor = encode_cursor(cursors[0]) if cursors else None
    more_after = (not went_back and has_more) or (went_back and bool(cursors))
    more_before = (went_back and has_more) or (started_after and bool(cursors))
    path = f"{base}{request.url.path}"

    def link(direction: str, cursor: str | None) -> str | None:
        if cursor is None:
            return None
        query = {**page.keep, "page[size]": page.size, f"page[{direction}]": cursor}
        return f"{path}?{urlencode(query)}"

    return {
        **entries,
        "meta": {
            "has_more": has_more,
            "after_cursor": after_cursor,
            "before_cursor": before_cursor,
        },
        "links": {
            "next": link("after", after_cursor) if more_after else None,
            "prev": link("before", before_cursor) if more_before else None,
        },
    }


def render_delivery(row: DeliveryRow) -> dict[str, Any]:
    """A webhook delivery: its webhook-id, event type, state and every attempt."""
    return {
        "id": row.id,
        "type": row.type,
        "state": row.state,
        "attempts": [
            {"at": rfc3339(a.at), "status_code": a.status_code, "error": a.error}
            for a in row.attempts
        ],
        "next_attempt_at": None if row.next_attempt_at is None else rfc3339(row.next_attempt_at),
    }
