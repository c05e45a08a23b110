"""Tools for the hostile-input tests: raw ASGI requests, error checks, and a stored job
that proves a hostile request changed nothing."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import orjson
from starlette.types import ASGIApp, Message

from .harness import Harness

SQL = [
    "' OR 1=1 --",
    '"; DROP TABLE jobs; --',
    "1; DELETE FROM items",
    "' UNION SELECT * FROM jobs --",
]
JSON = {"Content-Type": "application/json"}
VALID_JOB = {"job": {"job_type": "demo.echo", "items": [{"id": 1}]}}
LONG = "a" * 100_000


class Raw:
    """A response straight from the ASGI app."""

    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = body

    def json(self) -> Any:
        return orjson.loads(self.content)


async def raw_request(
    app: ASGIApp,
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> Raw:
    """Send `target` (path and query, already percent-encoded) as a server would: the path
    percent-decoded but not normalised, headers as raw bytes."""
    raw_path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("ascii"),
        "root_path": "",
        "query_string": query.encode("ascii"),
        "headers": [(b"host", b"joblot.test"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("joblot.test", 80),
    }
    sent = False
    start: Message = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    headers_out = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
    return Raw(start["status"], headers_out, b"".join(chunks))


def assert_error(response: Any, code: int, error: str | None = None) -> dict[str, Any]:
    """A 4xx with exactly `{"error", "description"}`, a named error and a readable text."""
    assert response.status_code == code, (response.status_code, response.content[:300])
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "description"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["description"], str) and body["description"]
    assert len(body["description"]) < 1000, "an error does not echo hostile input at length"
    if error is not None:
        assert body["error"] == error, body
    return body


class Baseline:
    """A job stored before the hostile requests, and a way to prove it was left alone."""

    def __init__(self, h: Harness, job_id: str, snapshot: Any, etag: str) -> None:
        self.h = h
        self.id = job_id
        self.snapshot = snapshot
        self.etag = etag

    @classmethod
    async def store(cls, h: Harness) -> Baseline:
        job_id = (await h.submit([{"id": 7, "note": "baseline"}]))["id"]
        response = await h.http.get(f"/api/v2/job_statuses/{job_id}")
        return cls(h, job_id, response.json(), response.headers["ETag"])

    async def assert_untouched(self) -> None:
        """Still the only job, byte for byte as it was (same ETag: nothing changed)."""
        listed = (await self.h.http.get("/api/v2/job_statuses")).json()["job_statuses"]
        assert [job["id"] for job in listed] == [self.id]
        response = await self.h.http.get(f"/api/v2/job_statuses/{self.id}")
        assert response.json() == self.snapshot
        assert response.headers["ETag"] == self.etag


def nested(depth: int) -> bytes:
    """`depth` empty arrays, one inside the other."""
    return b"[" * depth + b"]" * depth


def job_body(items: bytes, job_type: bytes = b'"demo.echo"') -> bytes:
    """A submission body around raw JSON `items` (and `job_type`), left as bytes so that
    invalid JSON can be sent."""
    return b'{"job": {"job_type": ' + job_type + b', "items": ' + items + b"}}"
