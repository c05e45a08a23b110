"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json."""

from __future__ import annotations

import functools
from typing import Any

from joblot.egress import MAX_URL_LENGTH
from joblot.models import MAX_JOB_TYPE_LENGTH, MAX_PAGE_SIZE, JobStatus

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    """The error answers of an operation: `codes`, plus 401 and 429, which every endpoint
    can give (each needs a token and is rate limited)."""
    text = {
        400: "Bad request",
        401: "Missing, unknown or revoked token",
        404: "No such job",
        409: "Conflict with the job's state",
        413: "Body too large",
        415: "Body is not JSON",
        422: "Invalid job",
        429: "Rate limit or job quota reached; retry after Retry-After seconds",
        503: "Database unreachable; retry",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in sorted({*codes, 401, 429})}


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Job id (32 hex characters), optionally followed by `.json`",
}
_PAGE = [
    {
        "name": "page[size]",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
    },
    {"name": "page[after]", "in": "query", "schema": {"type": "string"}},
    {"name": "page[before]", "in": "query", "schema": {"type": "string"}},
]


def _job_stats() -> dict[str, Any]:
    """What a JobStatus leaves out (it never gains a key), sent beside it as `job_stats`."""
    time = {"type": "string", "format": "date-time", "description": "RFC 3339 UTC, milliseconds"}
    maybe_time = {**time, "type": ["string", "null"]}
    return {
        "type": "object",
        "description": "Sent beside every JobStatus: how many items failed and when the job "
        "was created, first claimed, last changed (a change to its JobStatus) and finished.",
        "required": ["failures", "created_at", "started_at", "updated_at", "finished_at"],
        "properties": {
            "failures": {
                "type": "integer",
                "minimum": 0,
                "description": "Finished items that failed (counted in `progress` too)",
            },
            "created_at": time,
            "started_at": maybe_time,
            "updated_at": time,
            "finished_at": maybe_time,
        },
    }


def _delivery() -> dict[str, Any]:
    """A webhook delivery: its webhook-id, event type, state and attempts."""
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    attempt = {
        "type": "object",
        "required": ["at", "status_code", "error"],
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "status_code": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
        },
    }
    return {
        "type": "object",
        "required": ["id", "type", "state", "attempts", "next_attempt_at"],
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string", "enum": ["job.completed", "job.failed"]},
            "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
            "attempts": {"type": "array", "items": attempt},
            "next_attempt_at": nullable_time,
        },
    }


_SUCCESS = {
    "name": "success",
    "in": "query",
    "schema": {"type": "string", "enum": ["true", "false"]},
    "description": "`false`: only the failed entries; `true`: only the succeeded ones",
}
_LIST_FILTERS = [
    {
        "name": "status",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Only jobs in this status, or in any of a comma list "
        "(`queued,working`); the page links keep it",
    },
    {
        "name": "job_type",
        "in": "query",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_JOB_TYPE_LENGTH},
        "description": "Only jobs of this job type; the page links keep it",
    },
]


def _schemas() -> dict[str, Any]:
    job_status = JobStatus.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = job_status.pop("$defs", {})
    page_meta = {
        "type": "object",
        "required": ["has_more", "after_cursor", "before_cursor"],
        "properties": {
            "has_more": {"type": "boolean"},
            "after_cursor": {"type": ["string", "null"]},
            "before_cursor": {"type": ["string", "null"]},
        },
    }
    stats_by_id = {
        "type": "object",
        "description": "The `job_stats` of each JobStatus of the list, by job id",
        "additionalProperties": _ref("JobStats"),
    }
    links = {
        "type": "object",
        "required": ["next", "prev"],
        "properties": {"next": {"type": ["string", "null"]}, "prev": {"type": ["string", "null"]}},
    }
    return {
        **nested,
        "JobStatus": job_status,
        "Error": {
            "type": "object",
            "required": ["error", "description"],
            "properties": {"error": {"type": "string"}, "description": {"type": "string"}},
        },
        "JobStats": _job_stats(),
        "JobStatusEnvelope": {
            "type": "object",
            "required": ["job_status", "job_stats"],
            "properties": {"job_status": _ref("JobStatus"), "job_stats": _ref("JobStats")},
        },
        "JobStatusList": {
            "type": "object",
            "required": ["job_statuses", "job_stats", "meta", "links"],
            "properties": {
                "job_statuses": {"type": "array", "items": _ref("JobStatus")},
                "job_stats": stats_by_id,
                "meta": page_meta,
                "links": links,
            },
        },
        "JobStatusMany": {
            "type": "object",
            "required": ["job_statuses", "job_stats"],
            "properties": {
                "job_statuses": {"type": "array", "items": _ref("JobStatus")},
                "job_stats": stats_by_id,
            },
        },
        "ResultList": {
            "type": "object",
            "required": ["results", "meta", "links"],
            "properties": {
                "results": {
                    "type": "array",
                    "items": {"type": "object", "required": ["index", "success"]},
                },
                "meta": page_meta,
                "links": links,
            },
        },
        "DeliveryList": {
            "type": "object",
            "required": ["deliveries"],
            "properties": {"deliveries": {"type": "array", "items": _delivery()}},
        },
        "JobSubmission": {
            "type": "object",
            "required": ["job"],
            "additionalProperties": False,
            "properties": {
                "job": {
                    "type": "object",
                    "required": ["job_type", "items"],
                    "additionalProperties": False,
                    "properties": {
                        "job_type": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_JOB_TYPE_LENGTH,
                        },
                        "items": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                        "callback_url": {
                            "type": ["string", "null"],
                            "maxLength": MAX_URL_LENGTH,
                            "description": "http(s) URL of a public host: a signed "
                            "job.completed or job.failed event is POSTed there when the job ends",
                        },
                    },
                }
            },
        },
    }


def _paths() -> dict[str, Any]:
    envelope = _ref("JobStatusEnvelope")
    return {
        "/api/v2/jobs": {
            "post": {
                "operationId": "submit_job",
                "summary": "Submit a job of N items",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 255},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("JobSubmission")}},
                },
                "responses": {
                    "202": _json(envelope, "Queued; poll the Location"),
                    **_errors(400, 409, 413, 415, 422, 503),
                },
            }
        },
        "/api/v2/job_statuses": {
            "get": {
                "operationId": "list_jobs",
                "summary": "List jobs, unfinished first",
                "parameters": [*_PAGE, *_LIST_FILTERS],
                "responses": {
                    "200": _json(_ref("JobStatusList"), "A page of jobs"),
                    **_errors(400, 503),
                },
            }
        },
        "/api/v2/job_statuses/show_many": {
            "get": {
                "operationId": "show_many",
                "summary": "Several jobs by id",
                "parameters": [
                    {"name": "ids", "in": "query", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _json(_ref("JobStatusMany"), "The jobs found"),
                    **_errors(400, 503),
                },
            }
        },
        "/api/v2/job_statuses/events": {
            "get": {
                "operationId": "tenant_events",
                "summary": "Every change of the tenant's jobs as Server-Sent Events",
                "description": 'One `job_status` event (`{"job_status": {...}, '
                '"job_stats": {...}}`, `results` always null) each time any of the '
                "tenant's jobs changes, new jobs included; never ends on its own, and a "
                "comment line keeps a quiet stream open. A job comes in its latest state: "
                "changes of one job close together may be one event. The id of the last event "
                "of each batch (and of a first `id:` line) is an opaque position: send it back "
                "as `Last-Event-ID` to get everything that changed since, nothing missed.",
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "An event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(503),
                },
            }
        },
        "/api/v2/job_statuses/{id}": {
            "get": {
                "operationId": "show_job",
                "summary": "One JobStatus",
                "parameters": [
                    _ID,
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                    {
                        "name": "Prefer",
                        "in": "header",
                        "schema": {"type": "string"},
                        "description": "`wait=N`: long poll up to N seconds",
                    },
                ],
                "responses": {
                    "200": _json(envelope, "The JobStatus"),
                    "304": {"description": "Unchanged since the ETag given"},
                    **_errors(404, 503),
                },
            }
        },
        "/api/v2/job_statuses/{id}/results": {
            "get": {
                "operationId": "list_results",
                "summary": "A job's results by index, in pages",
                "parameters": [_ID, *_PAGE, _SUCCESS],
                "responses": {
                    "200": _json(_ref("ResultList"), "A page of result entries"),
                    **_errors(400, 404, 503),
                },
            }
        },
        "/api/v2/job_statuses/{id}/results/export": {
            "get": {
                "operationId": "export_results",
                "summary": "Every result entry of a job as a file, in index order",
                "description": "Streamed in constant memory, whatever the job's size. CSV has "
                "the columns `index,id,success,error,details`, then the other keys in the "
                "order first seen; objects and lists are written as JSON, and a text cell "
                "starting with `=`, `+`, `-` or `@` is written behind a `'` so that no "
                "spreadsheet runs it as a formula.",
                "parameters": [
                    _ID,
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["jsonl", "csv"], "default": "jsonl"},
                    },
                    _SUCCESS,
                ],
                "responses": {
                    "200": {
                        "description": "The file (Content-Disposition: attachment)",
                        "content": {
                            "application/x-ndjson": {"schema": {"type": "string"}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 404, 503),
                },
            }
        },
        "/api/v2/job_statuses/{id}/cancel": {
            "post": {
                "operationId": "cancel_job",
                "summary": "Cancel a job",
                "parameters": [_ID],
                "responses": {
                    "200": _json(envelope, "The cancelled job"),
                    **_errors(404, 409, 503),
                },
            }
        },
        "/api/v2/job_statuses/{id}/deliveries": {
            "get": {
                "operationId": "list_deliveries",
                "summary": "The job's webhook deliveries and their attempts",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("DeliveryList"), "The deliveries"),
                    **_errors(404, 503),
                },
            }
        },
        "/api/v2/job_statuses/{id}/deliveries/redeliver": {
            "post": {
                "operationId": "redeliver",
                "summary": "Send the job's webhook event again (a new round of attempts)",
                "parameters": [_ID],
                "responses": {
                    "202": _json(_ref("DeliveryList"), "Queued; the deliveries"),
                    **_errors(404, 409, 422, 503),
                },
            }
        },
        "/api/v2/job_statuses/{id}/retry": {
            "post": {
                "operationId": "retry_job",
                "summary": "Queue a new job of a finished job's failed items",
                "description": "The new job has a new id and the same `job_type`; its items are "
                "the failed items of `{id}`, exactly as they were submitted, in index order. "
                "It counts against the tenant's quota as any submit does.",
                "parameters": [
                    _ID,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 255},
                    },
                ],
                "responses": {
                    "202": _json(envelope, "Queued; poll the Location"),
                    **_errors(400, 404, 409, 422, 503),
                },
            }
        },
        "/api/v2/job_statuses/{id}/events": {
            "get": {
                "operationId": "job_events",
                "summary": "The job's status changes as Server-Sent Events, until it finishes",
                "description": 'Each `job_status` event carries `{"job_status": {...}}` and has '
                "the status version as its id; send `Last-Event-ID` to resume.",
                "parameters": [
                    _ID,
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "An event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(404, 503),
                },
            }
        },
        **_probes(),
    }


def _probes() -> dict[str, Any]:
    """`/livez` and `/readyz`: no token needed."""
    ok = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
    return {
        "/livez": {
            "get": {
                "operationId": "livez",
                "summary": "The process answers (the database is not asked)",
                "security": [],
                "responses": {"200": _json(ok, "Alive")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "The database answers and its schema is current",
                "security": [],
                "responses": {
                    "200": _json(ok, "Ready"),
                    "503": _json(_ref("Error"), "Not ready; retry after Retry-After seconds"),
                },
            }
        },
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI document (built once)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "joblot",
            "version": "2",
            "description": "Batch jobs with Zendesk-compatible job statuses.",
        },
        "paths": _paths(),
        "components": {"schemas": _schemas()},
    }
