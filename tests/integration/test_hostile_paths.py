"""Hostile path and query parameters against the real app in-process on SQLite: ids, cursors,
page sizes and path tricks get a 4xx JSON error (or, for show_many, no match), never a 5xx,
and the job already stored is never changed.

httpx normalises dot segments and refuses 100 kB URLs, so those requests go straight to the
ASGI app, the way a server hands them over.
"""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import quote, unquote

import orjson
import pytest

from joblot.api import create_app
from joblot.params import encode_cursor

from .harness import harness
from .hostile import LONG, SQL, VALID_JOB, Baseline, assert_error, raw_request

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- path parameters ------------------------------------------------------------------------

HOSTILE_IDS = [
    "\x00",
    "0" * 31 + "\x00",
    *SQL,
    str(2**100),
    "-1",
    "1e400",
    "0" * 32 + "' OR '1'='1",
    "*",
    "%",
    "\u0660" * 32,
    "A" * 32,
]


@pytest.mark.parametrize("job_id", HOSTILE_IDS)
async def test_a_hostile_job_id_is_not_found_on_every_route_and_changes_nothing(
    tmp_path: Path, job_id: str
) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        for candidate in (job_id, baseline.id + job_id, job_id + baseline.id):
            path = f"/api/v2/job_statuses/{quote(candidate, safe='')}"
            for method, suffix in (
                ("GET", ""),
                ("GET", ".json"),
                ("GET", "/results"),
                ("POST", "/cancel"),
            ):
                response = await h.http.request(method, path + suffix)
                assert_error(response, 404, "RecordNotFound")
        await baseline.assert_untouched()


async def test_a_100_kb_job_id_is_not_found_and_not_echoed(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        app = create_app(h.service)
        for method, suffix in (("GET", ""), ("GET", "/results"), ("POST", "/cancel")):
            response = await raw_request(app, method, f"/api/v2/job_statuses/{LONG}{suffix}")
            assert_error(response, 404, "RecordNotFound")
        many = await raw_request(app, "GET", f"/api/v2/job_statuses/show_many?ids={LONG}")
        assert many.status_code == 200 and many.json() == {"job_statuses": [], "job_stats": {}}
        await baseline.assert_untouched()


PATH_TRICKS = [
    ("GET", "/api/v2/job_statuses/../../etc/passwd", 404),
    ("GET", "/api/v2/job_statuses/%2e%2e/%2e%2e/etc/passwd", 404),
    ("GET", "/api/v2/job_statuses/..%2f..%2fetc%2fpasswd", 404),
    ("GET", "/api/v2/job_statuses/%252e%252e%252fetc", 404),
    ("GET", "//api/v2/job_statuses", 404),
    ("GET", "/api/v2//job_statuses", 404),
    ("GET", "/api/v2/job_statuses/./show_many", 404),
    ("GET", "/api/v2/job_statuses/{id}/..", 404),
    ("GET", "/api/v2/job_statuses/{id}/results/..", 404),
    ("GET", "/api/v2/job_statuses/{id}.json.json", 404),
    ("GET", "/api/v2/job_statuses/{id}%00.json", 404),
    ("GET", "/api/v2/job_statuses/{id}%00", 404),
    ("GET", "/api/v2/job_statuses/{id}%2Fcancel", 405),
    ("POST", "/api/v2/job_statuses/{id}/cancel/..", 404),
    ("POST", "/api/v2/job_statuses/..%2F{id}/cancel", 404),
    ("POST", "/api/v2/jobs/../job_statuses/{id}/cancel", 404),
    ("GET", "/api/v2/job_statuses/%00", 404),
    ("GET", "/api/v2/job_statuses/%C0%AE%C0%AE", 404),
    ("GET", "/api/v2/job_statuses/%ff%fe", 404),
    ("GET", "/API/V2/JOB_STATUSES", 404),
]


@pytest.mark.parametrize(("method", "target", "code"), PATH_TRICKS)
async def test_path_tricks_get_a_json_4xx_and_change_nothing(
    tmp_path: Path, method: str, target: str, code: int
) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        app = create_app(h.service)
        response = await raw_request(app, method, target.replace("{id}", baseline.id))
        assert_error(response, code)
        await baseline.assert_untouched()


@pytest.mark.parametrize(
    "target",
    ["/api/v2/job_statuses/", "/api/v2/job_statuses//", "/api/v2/jobs/", "/api/v2/jobs//"],
)
async def test_a_trailing_slash_only_redirects_to_the_same_host_and_stores_nothing(
    tmp_path: Path, target: str
) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        app = create_app(h.service)
        headers = [(b"content-type", b"application/json")]
        for method in ("GET", "POST"):
            response = await raw_request(app, method, target, headers, orjson.dumps(VALID_JOB))
            assert response.status_code == 307
            assert response.headers["location"] == "http://joblot.test" + target.rstrip("/")
        await baseline.assert_untouched()


# -- query parameters -----------------------------------------------------------------------

HOSTILE_PAGE_SIZES = [
    "-1", "0", "101", "1e400", "1e2", "1.0", "0x10", str(2**100), "9" * 5000, "0" * 10 + "50000",
    "\u00b2", "\u0663", "\uff15", " 5", "5 ", "+5", "%00", "5%00", *SQL, "",
]  # fmt: skip


def _results_path(job_id: str) -> str:
    return f"/api/v2/job_statuses/{job_id}/results"


@pytest.mark.parametrize("size", HOSTILE_PAGE_SIZES)
async def test_a_hostile_page_size_is_an_invalid_parameter(tmp_path: Path, size: str) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        for path in ("/api/v2/job_statuses", _results_path(baseline.id)):
            response = await h.http.get(path, params={"page[size]": unquote(size)})
            assert_error(response, 400, "InvalidParameter")
        await baseline.assert_untouched()


def _hostile_cursors(job_id: str) -> list[str]:
    key = "0" + "1" * 16 + job_id  # the shape of a list key, but made up
    return [
        *SQL,
        "\x00",
        "%00",
        LONG[:5000],
        str(2**100),
        "-1",
        *(encode_cursor(s) for s in SQL),
        encode_cursor(key + "' OR 1=1 --"),
        encode_cursor("-1"),
        encode_cursor("1" * 13),
        encode_cursor("\x00"),
        base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
        "====",
        "a",
    ]


async def test_hostile_cursors_are_invalid_parameters_on_both_paginated_routes(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        for cursor in _hostile_cursors(baseline.id):
            for path in ("/api/v2/job_statuses", _results_path(baseline.id)):
                for direction in ("after", "before"):
                    response = await h.http.get(path, params={f"page[{direction}]": cursor})
                    assert_error(response, 400, "InvalidParameter")
        await baseline.assert_untouched()


async def test_show_many_ignores_hostile_ids_and_finds_only_real_ones(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        for hostile in [*HOSTILE_IDS, ",,,,", "," * 10_000, f"{baseline.id}' OR 1=1 --"]:
            response = await h.http.get("/api/v2/job_statuses/show_many", params={"ids": hostile})
            assert response.status_code == 200 and response.json() == {
                "job_statuses": [],
                "job_stats": {},
            }
            mixed = await h.http.get(
                "/api/v2/job_statuses/show_many", params={"ids": f"{hostile},{baseline.id}"}
            )
            assert [j["id"] for j in mixed.json()["job_statuses"]] == [baseline.id]
        too_many = ",".join(SQL * 30)
        response = await h.http.get("/api/v2/job_statuses/show_many", params={"ids": too_many})
        assert_error(response, 400, "InvalidParameter")
        await baseline.assert_untouched()


async def test_unknown_and_repeated_query_parameters_are_harmless(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        baseline = await Baseline.store(h)
        for query in (
            f"tenant=other&state=failed&{quote(SQL[1])}=1",
            "page[size]=1&page[size]=abc",
            "page%5Bsize%5D=1&page[size]=2",
            "page[size][]=1",
            "page[]=1&page=2",
            "%00=%00",
        ):
            response = await h.http.get(f"/api/v2/job_statuses?{query}")
            assert response.status_code in (200, 400), query
            if response.status_code == 400:
                assert_error(response, 400, "InvalidParameter")
            else:
                assert [j["id"] for j in response.json()["job_statuses"]] == [baseline.id]
        await baseline.assert_untouched()
