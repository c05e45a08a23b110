"""Hostile bodies, headers and methods against the real app in-process on SQLite: every
request gets a 4xx JSON error naming the problem (never a 5xx), and no job or result is
stored, lost or changed by it; handler results that are not JSON fail only their item.

httpx refuses or normalises some of these requests (odd header bytes, lying lengths), so
those go straight to the ASGI app, the way a server hands them over.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from joblot.api import create_app
from joblot.app import App, ItemFailed
from joblot.auth import mint_token
from joblot.demo import make_demo_app

from .harness import harness
from .hostile import (
    JSON,
    SQL,
    VALID_JOB,
    Baseline,
    assert_error,
    job_body,
    nested,
    raw_request,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- bodies ---------------------------------------------------------------------------------


def _item_with(field: bytes) -> bytes:
    return job_body(b"[{" + field + b"}]")


def _typed(job_type: bytes) -> bytes:
    return job_body(b"[{}]", job_type)


INVALID_JSON = {
    "truncated": b'{"job": ',
    "single-quotes": b"{'job': {}}",
    "trailing-comma": job_body(b"[{},]"),
    "empty-body": b"",
    "invalid-utf8": b"\xff\xfe\x00{",
    "invalid-utf8-in-string": _item_with(b'"id": "\xc3\x28"'),
    "utf8-bom": b"\xef\xbb\xbf" + orjson.dumps(VALID_JOB),
    "raw-nul-after-json": orjson.dumps(VALID_JOB) + b"\x00",
    "lone-surrogate": _item_with(b'"id": "\\ud800"'),
    "number-1e400": _item_with(b'"id": 1e400'),
    "number-minus-1e400": _item_with(b'"x": -1e400'),
    "nan": _item_with(b'"x": NaN'),
    "item-nested-10000": _item_with(b'"x": ' + nested(10_000)),
    "body-nested-10000": nested(10_000),
}
RECORD_INVALID = {
    "item-nested-300": _item_with(b'"x": ' + nested(300)),
    "item-nested-1000": _item_with(b'"x": ' + nested(1000)),
    "id-2**100": _item_with(b'"id": ' + str(2**100).encode()),
    "id-2**63": _item_with(b'"id": ' + str(2**63).encode()),
    "id-minus-2**63-1": _item_with(b'"id": ' + str(-(2**63) - 1).encode()),
    "id-float": _item_with(b'"id": 1.5'),
    "id-bool": _item_with(b'"id": true'),
    "id-object": _item_with(b'"id": {"$gt": ""}'),
    "id-100kB": _item_with(b'"id": "' + b"x" * 100_000 + b'"'),
    "body-array": b"[]",
    "body-array-of-job": b"[" + orjson.dumps(VALID_JOB) + b"]",
    "body-string": b'"job"',
    "body-number": b"42",
    "body-null": b"null",
    "job-null": b'{"job": null}',
    "job-array": b'{"job": []}',
    "job-string": b'{"job": "demo.echo"}',
    "unknown-top-field": b'{"job": {"job_type": "demo.echo", "items": [{}]}, "admin": true}',
    "unknown-job-field": b'{"job": {"job_type": "demo.echo", "items": [{}], "tenant": "x"}}',
    "duplicate-keys": b'{"job": {"job_type": "a", "job_type": "demo.echo", "items": [], "id": 1}}',
    "job-type-number": _typed(b"5"),
    "job-type-array": _typed(b'["demo.echo"]'),
    "job-type-empty": _typed(b'""'),
    "job-type-100kB": _typed(b'"' + b"x" * 100_000 + b'"'),
    "items-null": job_body(b"null"),
    "items-object": job_body(b"{}"),
    "items-string": job_body(b'"abc"'),
    "items-empty": job_body(b"[]"),
    "items-numbers": job_body(b"[1, 2]"),
    "items-null-item": job_body(b"[{}, null]"),
    "items-string-item": job_body(b'[{}, "x"]'),
    "items-array-item": job_body(b"[{}, [{}]]"),
}
UNKNOWN_JOB_TYPE = {
    "job-type-nul": _typed(b'"demo.echo\\u0000"'),
    "job-type-path": _typed(b'"../demo.echo"'),
    **{f"job-type-sql-{n}": _typed(orjson.dumps(fragment)) for n, fragment in enumerate(SQL)},
}
BAD_BODIES = [
    *(pytest.param(b, 400, "InvalidJSON", id=k) for k, b in INVALID_JSON.items()),
    *(pytest.param(b, 422, "RecordInvalid", id=k) for k, b in RECORD_INVALID.items()),
    *(pytest.param(b, 422, "UnknownJobType", id=k) for k, b in UNKNOWN_JOB_TYPE.items()),
    pytest.param(job_body(b"[" + b"{}," * 10 + b"{}]"), 422, "TooManyItems", id="11-items"),
    pytest.param(_item_with(b'"pad": "' + b"x" * 300_000 + b'"'), 413, "PayloadTooLarge", id="big"),
]


@pytest.mark.parametrize(("body", "code", "error"), BAD_BODIES)
async def test_a_hostile_body_gets_a_named_4xx_and_stores_nothing(
    tmp_path: Path, body: bytes, code: int, error: str
) -> None:
    async with harness(tmp_path, max_items=10, max_body_bytes=256 * 1024) as h:
        baseline = await Baseline.store(h)
        response = await h.http.post("/api/v2/jobs", content=body, headers=JSON)
        assert_error(response, code, error)
        await baseline.assert_untouched()


async def test_the_error_for_a_too_deeply_nested_item_names_the_item(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        items = b'[{"id": 1}, {"x": ' + nested(400) + b"}]"
        response = await h.http.post("/api/v2/jobs", content=job_body(items), headers=JSON)
        assert "items[1]" in assert_error(response, 422, "RecordInvalid")["description"]
        ok = await h.http.post(
            "/api/v2/jobs", content=job_body(b'[{"x": ' + nested(200) + b"}]"), headers=JSON
        )
        assert ok.status_code == 202, "nesting well inside the limit is fine"


@pytest.mark.parametrize(
    ("content_type", "code"),
    [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/xml", 415),
        ("", 415),
        ("application/json", 202),
        ("application/json; charset=utf-8", 202),
        ("APPLICATION/JSON", 202),
    ],
)
async def test_only_json_content_types_are_accepted(
    tmp_path: Path, content_type: str, code: int
) -> None:
    async with harness(tmp_path) as h:
        response = await h.http.post(
            "/api/v2/jobs", content=orjson.dumps(VALID_JOB), headers={"Content-Type": content_type}
        )
        listed = (await h.http.get("/api/v2/job_statuses")).json()["job_statuses"]
        if code == 415:
            assert_error(response, 415, "UnsupportedMediaType")
            assert listed == []
        else:
            assert response.status_code == 202 and len(listed) == 1


@pytest.mark.parametrize(
    ("content_length", "code", "error"),
    [
        (b"\xb2", 422, "RecordInvalid"),  # "²": str.isdigit() says yes, int() says no
        (b"-1", 422, "RecordInvalid"),
        (b"1e400", 422, "RecordInvalid"),
        (b"' OR 1=1 --", 422, "RecordInvalid"),
        (b"abc", 422, "RecordInvalid"),
        (str(2**100).encode(), 413, "PayloadTooLarge"),
        (b"9" * 5000, 413, "PayloadTooLarge"),  # more digits than int() takes
    ],
)
async def test_a_nonsense_content_length_is_no_server_error(
    tmp_path: Path, content_length: bytes, code: int, error: str
) -> None:
    async with harness(tmp_path, max_body_bytes=4096) as h:
        baseline = await Baseline.store(h)
        app = create_app(h.service)
        headers = [(b"content-type", b"application/json"), (b"content-length", content_length)]
        response = await raw_request(app, "POST", "/api/v2/jobs", headers, b"[]")
        assert_error(response, code, error)
        big = b'{"x": "' + b"x" * 5000 + b'"}'
        response = await raw_request(app, "POST", "/api/v2/jobs", headers, big)
        assert_error(response, 413, "PayloadTooLarge")
        await baseline.assert_untouched()


async def test_items_with_nul_bytes_sql_and_extreme_values_round_trip_unchanged(
    tmp_path: Path,
) -> None:
    odd_ids: list[Any] = [
        "a\x00b",
        *SQL,
        "../../etc/passwd",
        "%00%2e%2e",
        "\u202e\U0001f4a3",
        2**63 - 1,
        -(2**63),
        0,
        "",
    ]
    async with harness(tmp_path) as h:
        items = [{"id": odd, "payload": {"nested": [odd, None, 1.5]}} for odd in odd_ids]
        job_id = (await h.submit(items))["id"]
        h.start_worker()
        final = await h.wait(job_id)
        assert final["status"] == "completed"
        assert [entry["id"] for entry in final["results"]] == odd_ids
        assert all(entry["success"] for entry in final["results"])


# -- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "a b",
        "'; DROP TABLE jobs; --",
        "' OR 1=1 --",
        "k" * 256,
        "\u00e9t\u00e9",
        "tab\there",
    ],
)
async def test_a_hostile_idempotency_key_is_refused_and_stores_nothing(
    tmp_path: Path, key: str
) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        app = create_app(h.service)
        headers = [(b"content-type", b"application/json"), (b"idempotency-key", key.encode())]
        response = await raw_request(app, "POST", "/api/v2/jobs", headers, orjson.dumps(VALID_JOB))
        assert_error(response, 400, "InvalidParameter")
        await baseline.assert_untouched()


async def test_an_idempotency_key_with_nul_or_control_bytes_is_refused(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        app = create_app(h.service)
        for key in (b"a\x00b", b"\x00", b"a\r\nb", b"\xff\xfe", b""):
            headers = [(b"content-type", b"application/json"), (b"idempotency-key", key)]
            body = orjson.dumps(VALID_JOB)
            response = await raw_request(app, "POST", "/api/v2/jobs", headers, body)
            assert_error(response, 400, "InvalidParameter")
        await baseline.assert_untouched()


async def test_sql_shaped_idempotency_keys_are_stored_as_plain_text(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        key = "'OR'1'='1';DROP/**/TABLE/**/jobs;--"
        first = await h.http.post("/api/v2/jobs", json=VALID_JOB, headers={"Idempotency-Key": key})
        again = await h.http.post("/api/v2/jobs", json=VALID_JOB, headers={"Idempotency-Key": key})
        assert first.status_code == again.status_code == 202
        assert first.json()["job_status"]["id"] == again.json()["job_status"]["id"]
        other = {"job": {"job_type": "demo.echo", "items": [{"id": 2}]}}
        reused = await h.http.post("/api/v2/jobs", json=other, headers={"Idempotency-Key": key})
        assert_error(reused, 409, "IdempotencyKeyReused")
        near = await h.http.post(
            "/api/v2/jobs", json=VALID_JOB, headers={"Idempotency-Key": key + "x"}
        )
        assert near.json()["job_status"]["id"] != first.json()["job_status"]["id"]
        listed = (await h.http.get("/api/v2/job_statuses")).json()["job_statuses"]
        assert len(listed) == 2


async def test_hostile_polling_headers_are_no_server_error(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        app = create_app(h.service)
        path = f"/api/v2/job_statuses/{baseline.id}"
        for name, value in (
            (b"if-none-match", b"\x00"),
            (b"if-none-match", b"' OR 1=1 --"),
            (b"if-none-match", b"," * 10_000),
            (b"prefer", b"wait=" + b"9" * 5000),
            (b"prefer", b"wait=-1"),
            (b"prefer", b"wait=\xb2"),
            (b"prefer", b"wait=1e400"),
        ):
            response = await raw_request(app, "GET", path, [(name, value)])
            assert response.status_code == 200, (name, value)
            assert response.json() == baseline.snapshot
        await baseline.assert_untouched()


async def test_hostile_credentials_get_401_and_see_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        minted = mint_token()
        await h.service.store.create_token(minted.token_id, "acme", minted.digest, time.time())
        app = create_app(h.service)
        for value in (
            *(f"Bearer {s}".encode() for s in SQL),
            b"Bearer " + minted.secret.encode() + b"' OR '1'='1",
            b"Bearer " + minted.secret.encode() + b"\x00",
            b"Bearer \xff\xfe",
            b"Basic " + base64.b64encode(b"a@b.c/token:' OR 1=1 --"),
            b"Basic " + base64.b64encode(b"a@b.c/token:\xff\xfe"),
            b"Basic " + base64.b64encode(f"a@b.c/token:{minted.secret}".encode())[:-2],
            b"Bearer " + b"x" * 100_000,
        ):
            for method, target in (("GET", "/api/v2/job_statuses"), ("POST", "/api/v2/jobs")):
                headers = [(b"authorization", value), (b"content-type", b"application/json")]
                body = orjson.dumps(VALID_JOB)
                response = await raw_request(app, method, target, headers, body)
                assert_error(response, 401, "Couldn't authenticate you")
        mine = await h.http.get(
            "/api/v2/job_statuses", headers={"Authorization": f"Bearer {minted.secret}"}
        )
        assert mine.status_code == 200 and mine.json()["job_statuses"] == []


# -- methods --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"])
async def test_wrong_methods_get_405_with_a_json_error_and_change_nothing(
    tmp_path: Path, method: str
) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        app = create_app(h.service)
        for path in (
            "/api/v2/jobs",
            "/api/v2/jobs.json",
            "/api/v2/job_statuses",
            "/api/v2/job_statuses/show_many",
            f"/api/v2/job_statuses/{baseline.id}",
            f"/api/v2/job_statuses/{baseline.id}.json",
            f"/api/v2/job_statuses/{baseline.id}/results",
            f"/api/v2/job_statuses/{baseline.id}/cancel",
        ):
            headers = [(b"content-type", b"application/json")]
            response = await raw_request(app, method, path, headers, orjson.dumps(VALID_JOB))
            assert_error(response, 405, "MethodNotAllowed")
        await baseline.assert_untouched()


async def test_get_on_post_routes_and_post_on_get_routes_get_405(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        for method, path in (
            ("GET", "/api/v2/jobs"),
            ("GET", f"/api/v2/job_statuses/{baseline.id}/cancel"),
            ("POST", "/api/v2/job_statuses"),
            ("POST", "/api/v2/job_statuses/show_many"),
            ("POST", f"/api/v2/job_statuses/{baseline.id}"),
            ("POST", f"/api/v2/job_statuses/{baseline.id}/results"),
        ):
            response = await h.http.request(method, path, json=VALID_JOB)
            assert_error(response, 405, "MethodNotAllowed")
        await baseline.assert_untouched()


# -- handler results ------------------------------------------------------------------------


def _bad_results_app() -> App:
    app = make_demo_app()

    @app.job_type("test.bad_results")
    def bad_result(item: dict[str, Any], ctx: object) -> Any:
        kind = item["kind"]
        deep: dict[str, Any] = {}
        cursor = deep
        for _ in range(300):
            cursor["a"] = cursor = {}
        returned: dict[str, Any] = {
            "object": {"when": object()},
            "set": {"tags": {1, 2}},
            "bytes": {"raw": b"\xff"},
            "int-key": {1: "one"},
            "huge-int": {"n": 2**70},
            "deep": deep,
        }
        if kind == "not-a-dict":
            return ["a", "list"]
        if kind == "ok":
            return {"fine": True}
        if kind == "surrogate":
            return {"text": "a\ud800b"}
        return returned[kind]

    return app


BAD_RESULT_KINDS = [
    "object",
    "set",
    "bytes",
    "int-key",
    "huge-int",
    "deep",
    "not-a-dict",
]


async def test_handler_results_that_are_not_json_fail_their_item_and_the_job_completes(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, app=_bad_results_app(), concurrency=2, batch_size=2) as h:
        kinds = ["ok", *BAD_RESULT_KINDS, "surrogate", "ok"]
        items = [{"id": i, "kind": kind} for i, kind in enumerate(kinds)]
        job_id = (await h.submit(items, "test.bad_results"))["id"]
        h.start_worker()
        final = await h.wait(job_id, timeout=10)
        assert final["status"] == "completed" and final["progress"] == len(kinds)
        results = final["results"]
        assert [entry["index"] for entry in results] == list(range(len(kinds)))
        assert results[0] == {"index": 0, "id": 0, "fine": True, "success": True}
        assert results[-1]["success"] is True
        for entry in results[1:-2]:
            assert entry["success"] is False and entry["error"] == "InvalidResult", entry
            assert entry["details"] and entry["id"] == entry["index"]
        # text JSON can carry once a lone surrogate is made U+FFFD is stored, not refused
        assert results[-2] == {
            "index": len(kinds) - 2,
            "id": len(kinds) - 2,
            "text": "a\ufffdb",
            "success": True,
        }
        later = (await h.submit([{"id": 0, "kind": "ok"}], "test.bad_results"))["id"]
        assert (await h.wait(later, timeout=10))["status"] == "completed", "the worker lives on"


async def test_an_exception_text_that_is_not_valid_utf8_fails_only_its_item(
    tmp_path: Path,
) -> None:
    app = make_demo_app()

    @app.job_type("test.bad_exception")
    def bad_exception(item: dict[str, Any], ctx: object) -> None:
        if item["id"] == 1:
            raise ItemFailed("details \udc00", error="Bad\ud800")
        raise ValueError("text \ud800")

    async with harness(tmp_path, app=app, concurrency=1, batch_size=1, max_attempts=1) as h:
        job_id = (await h.submit([{"id": 0}, {"id": 1}], "test.bad_exception"))["id"]
        h.start_worker()
        final = await h.wait(job_id, timeout=10)
        assert final["status"] == "completed"
        assert [entry["success"] for entry in final["results"]] == [False, False]
        assert "WorkerLost" not in {entry["error"] for entry in final["results"]}
