"""What a submission says: the `{"job": {...}}` document checked against the App's job types,
its items encoded for the store, its callback's syntax, and the digest an idempotent retry is
recognised by."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from joblot import codec
from joblot.app import App, JobType
from joblot.egress import UnsafeDestination, check_syntax
from joblot.errors import RecordInvalid, TooManyItems, UnknownJobType
from joblot.models import MAX_JOB_TYPE_LENGTH, new_job_id
from joblot.store import NewJob

MAX_ITEM_ID_LENGTH = 1000
JOB_KEYS = frozenset({"job_type", "items", "callback_url"})


def parse_submission(doc: Any, app: App, max_items: int) -> tuple[JobType, list[dict[str, Any]]]:
    """Check a decoded `{"job": {...}}` body; every problem is named in the error."""
    job = _job_object(doc)
    registered = job_type_named(job.get("job_type"), app)
    items = job.get("items")
    if not isinstance(items, list):
        raise RecordInvalid('"items" is required and must be a list of objects')
    if not items:
        raise RecordInvalid('"items" is empty: a job needs at least one item')
    if len(items) > max_items:
        raise TooManyItems(
            f"a job may have at most {max_items} items; this one has "
            f"{len(items)}: split it into several jobs"
        )
    for index, item in enumerate(items):
        _check_item(index, item)
    return registered, items


def _job_object(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict) or set(doc) != {"job"}:
        raise RecordInvalid(
            'the body must be an object with one key, "job": '
            '{"job": {"job_type": "...", "items": [...]}}'
        )
    job = doc["job"]
    if not isinstance(job, dict):
        raise RecordInvalid('"job" must be an object with "job_type" and "items"')
    unknown = sorted(set(job) - JOB_KEYS)
    if unknown:
        raise RecordInvalid(
            f"unknown field(s) in job: {', '.join(map(repr, unknown))}; "
            'a job has only "job_type", "items" and "callback_url"'
        )
    return job


def job_type_named(job_type: Any, app: App) -> JobType:
    if not isinstance(job_type, str) or not job_type:
        raise RecordInvalid('"job_type" is required and must be a non-empty string')
    if len(job_type) > MAX_JOB_TYPE_LENGTH:
        raise RecordInvalid(f'"job_type" is longer than {MAX_JOB_TYPE_LENGTH} characters')
    registered = app.get(job_type)
    if registered is None:
        raise UnknownJobType(
            f"unknown job_type {job_type!r}; this server runs: "
            f"{', '.join(app.names()) or 'no job types'}"
        )
    return registered


def _check_item(index: int, item: Any) -> None:
    if not isinstance(item, dict):
        raise RecordInvalid(f"items[{index}] must be an object, got {type(item).__name__}")
    item_id = item.get("id")
    if isinstance(item_id, bool) or not isinstance(item_id, str | int | None):
        raise RecordInvalid(f"items[{index}].id must be a string or an integer")
    if isinstance(item_id, str) and len(item_id) > MAX_ITEM_ID_LENGTH:
        raise RecordInvalid(f"items[{index}].id is longer than {MAX_ITEM_ID_LENGTH} characters")
    if isinstance(item_id, int) and not -(2**63) <= item_id < 2**63:
        raise RecordInvalid(f"items[{index}].id does not fit in 64 bits")


def encode_items(items: list[dict[str, Any]]) -> list[bytes]:
    """Each item as stored JSON. orjson reads 1024 levels of nesting but writes only about
    255, so a deeper item is refused here, naming it, instead of failing the write."""
    payloads = []
    for index, item in enumerate(items):
        try:
            payloads.append(codec.dumps(item))
        except orjson.JSONEncodeError:
            raise RecordInvalid(
                f"items[{index}] nests arrays and objects too deeply; keep items under 250 levels"
            ) from None
    return payloads


def callback_url(doc: Any) -> str | None:
    """The `callback_url` of a submission (already parsed), its syntax checked; the address
    it resolves to is checked by `egress.check_callback_url` when the job is submitted."""
    url = doc["job"].get("callback_url")
    if url is None:
        return None
    try:
        check_syntax(url)
    except UnsafeDestination as exc:
        raise RecordInvalid(f'"callback_url" is refused: {exc}') from None
    return str(url)


def request_hash(job_type: str, items: list[dict[str, Any]], callback: str | None = None) -> str:
    """A digest of what was asked, to tell an idempotent retry from a reused key."""
    digest = hashlib.sha256(job_type.encode())
    if callback is not None:
        digest.update(b"\ncallback_url " + callback.encode())
    for item in items:  # one item at a time: no deeper than the stored payloads
        digest.update(b"\n" + orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def build_job(
    app: App,
    tenant: str,
    doc: Any,
    max_items: int,
    now: float,
    *,
    idempotency_key: str | None = None,
    max_active_jobs: int | None = None,
    public_url: str | None = None,
) -> NewJob:
    """The job a `{"job": {...}}` submission describes, validated and encoded, ready to store.
    `public_url` is the base of the JobStatus `url` its completion event will carry."""
    job_type, items = parse_submission(doc, app, max_items)
    callback = callback_url(doc)
    digest = None
    if idempotency_key is not None:
        digest = request_hash(job_type.name, items, callback)
    return NewJob(
        id=new_job_id(now),
        tenant=tenant,
        job_type=job_type.name,
        action=job_type.action,
        max_failures=job_type.max_failures,
        payloads=encode_items(items),
        created_at=now,
        idempotency_key=idempotency_key,
        request_hash=digest,
        max_active_jobs=max_active_jobs,
        callback_url=callback,
        public_url=public_url if callback is not None else None,
    )


def item_count(doc: Any) -> int:
    job = doc.get("job") if isinstance(doc, dict) else None
    items = job.get("items") if isinstance(job, dict) else None
    return len(items) if isinstance(items, list) else 0
