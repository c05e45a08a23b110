"""Failures only, and the streamed export: `/results?success=`, `/results/export`, the client's
`results(success=)` and `export()`, over the real app in-process, on SQLite."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from joblot.app import App, Context, ItemFailed
from joblot.client import AsyncClient

from .harness import Harness, harness

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def every_seventh_fails(count: int) -> list[dict[str, Any]]:
    return [{"id": i, **({"fail": f"row {i}"} if i % 7 == 0 else {})} for i in range(count)]


async def finished_job(h: Harness, items: list[dict[str, Any]], job_type: str = "demo.echo") -> str:
    job_id: str = (await h.submit(items, job_type))["id"]
    if not h.workers:
        h.start_worker()
    await h.wait(job_id)
    return job_id


async def walk(h: Harness, url: str, direction: str = "next") -> list[dict[str, Any]]:
    """Every entry of every page from `url` on, following the `direction` links."""
    entries: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        body = (await h.http.get(next_url)).json()
        entries += body["results"] if direction == "next" else body["results"][::-1]
        next_url = body["links"][direction]
    return entries


async def test_success_false_pages_through_only_the_failed_entries(tmp_path: Path) -> None:
    async with harness(tmp_path, inline_results=10) as h:
        job_id = await finished_job(h, every_seventh_fails(100))
        base = f"/api/v2/job_statuses/{job_id}/results"
        failed = await walk(h, f"{base}?success=false&page[size]=3")
        assert [e["index"] for e in failed] == list(range(0, 100, 7))
        assert all(not e["success"] and e["error"] == "DemoFailure" for e in failed)
        succeeded = await walk(h, f"{base}.json?success=true&page[size]=30")
        assert [e["index"] for e in succeeded] == [i for i in range(100) if i % 7]
        # the links keep the filter, backwards too
        last_page = (await h.http.get(f"{base}?success=false&page[size]=3")).json()
        while last_page["links"]["next"]:
            last_page = (await h.http.get(last_page["links"]["next"])).json()
        assert "success=false" in last_page["links"]["prev"]
        back = await walk(h, last_page["links"]["prev"], "prev")
        assert [e["index"] for e in back][::-1] == list(range(0, 84, 7))


@pytest.mark.parametrize("value", ["no", "False", "0", ""])
async def test_a_bad_success_filter_gets_400(tmp_path: Path, value: str) -> None:
    async with harness(tmp_path) as h:
        job_id = (await h.submit([{"id": 1}]))["id"]
        for path in ("results", "results/export"):
            response = await h.http.get(f"/api/v2/job_statuses/{job_id}/{path}?success={value}")
            assert response.status_code == 400, path
            assert response.json()["error"] == "InvalidParameter"


async def test_jsonl_export_is_every_entry_of_results_in_index_order(tmp_path: Path) -> None:
    async with harness(tmp_path, inline_results=10) as h:
        job_id = await finished_job(h, every_seventh_fails(2500))
        paged = await walk(h, f"/api/v2/job_statuses/{job_id}/results")
        response = await h.http.get(f"/api/v2/job_statuses/{job_id}/results/export?format=jsonl")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["content-disposition"] == (
            f'attachment; filename="{job_id}-results.jsonl"'
        )
        exported = [orjson.loads(line) for line in response.content.splitlines()]
        assert len(exported) == 2500 and exported == paged
        default = await h.http.get(f"/api/v2/job_statuses/{job_id}/results/export")
        assert default.content == response.content
        failed = await h.http.get(f"/api/v2/job_statuses/{job_id}/results/export?success=false")
        assert 'filename="' + job_id + '-failures.jsonl"' in failed.headers["content-disposition"]
        assert [orjson.loads(x) for x in failed.content.splitlines()] == [
            e for e in paged if not e["success"]
        ]


def _spreadsheet_app() -> App:
    app = App()

    @app.job_type("sheet.rows", action="update")
    def row(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if "bad" in item:
            raise ItemFailed(item["bad"], error="=BadRow")
        return {"status": "Updated", "note": item.get("note"), "meta": {"n": item["id"]}}

    @app.job_type("sheet.late")
    def late(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"later": [1, 2]} if item["id"] == 2 else {}

    return app


async def test_csv_export_reads_back_with_columns_json_cells_and_no_formulas(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, app=_spreadsheet_app()) as h:
        items: list[dict[str, Any]] = [
            {"id": 1, "note": '=HYPERLINK("http://evil")'},
            {"id": "+2", "note": "-3+cmd|' /C calc'!A0"},
            {"id": 3, "bad": "@SUM(A1:A9)"},
            {"id": 4, "note": 'plain, with "quotes"\nand a newline'},
            {"id": -5, "note": "\tTAB"},
        ]
        job_id = await finished_job(h, items, "sheet.rows")
        response = await h.http.get(f"/api/v2/job_statuses/{job_id}/results/export?format=csv")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == (
            f'attachment; filename="{job_id}-results.csv"'
        )
        rows = list(csv.reader(io.StringIO(response.text)))
        header, cells = rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
        assert header == [
            "index", "id", "success", "error", "details", "action", "status", "note", "meta"
        ]  # fmt: skip
        assert [c["index"] for c in cells] == ["0", "1", "2", "3", "4"]
        assert cells[0]["note"] == '\'=HYPERLINK("http://evil")'
        assert cells[1]["id"] == "'+2" and cells[1]["note"] == "'-3+cmd|' /C calc'!A0"
        assert cells[2]["success"] == "false" and cells[2]["error"] == "'=BadRow"
        assert cells[2]["details"] == "'@SUM(A1:A9)" and cells[2]["note"] == ""
        assert cells[3]["note"] == 'plain, with "quotes"\nand a newline'
        assert cells[4]["id"] == "-5"  # a number is not a formula
        assert cells[4]["note"] == "'\tTAB"
        assert cells[0]["success"] == "true" and orjson.loads(cells[0]["meta"]) == {"n": 1}
        for cell in (c for row in rows for c in row):
            assert not cell.startswith(("=", "+", "@", "\t")), cell
            assert not cell.startswith("-") or cell == "-5", cell


async def test_csv_columns_include_keys_first_seen_late(tmp_path: Path) -> None:
    async with harness(tmp_path, app=_spreadsheet_app(), inline_results=1) as h:
        job_id = await finished_job(h, [{"id": i} for i in range(1, 4)], "sheet.late")
        response = await h.http.get(f"/api/v2/job_statuses/{job_id}/results/export?format=csv")
        rows = list(csv.reader(io.StringIO(response.text)))
        assert rows[0] == ["index", "id", "success", "error", "details", "later"]
        assert [r[-1] for r in rows[1:]] == ["", "[1,2]", ""]


async def test_export_refuses_an_unknown_format_and_another_tenants_job(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        acme, other = await h.tenant_headers("acme"), await h.tenant_headers("other")
        response = await h.http.post(
            "/api/v2/jobs",
            json={"job": {"job_type": "demo.echo", "items": [{"id": 1}]}},
            headers=acme,
        )
        job_id = response.json()["job_status"]["id"]
        base = f"/api/v2/job_statuses/{job_id}"
        bad = await h.http.get(f"{base}/results/export?format=xlsx", headers=acme)
        assert bad.status_code == 400 and bad.json()["error"] == "InvalidParameter"
        for path in ("results/export?format=csv", "results?success=false"):
            foreign = await h.http.get(f"{base}/{path}", headers=other)
            assert foreign.status_code == 404 and foreign.json()["error"] == "RecordNotFound"
            anonymous = await h.http.get(f"{base}/{path}")
            assert anonymous.status_code == 401
        missing = await h.http.get(f"/api/v2/job_statuses/{'0' * 32}/results/export", headers=acme)
        assert missing.status_code == 404


async def test_client_reads_failures_only_and_streams_an_export(tmp_path: Path) -> None:
    async with harness(tmp_path, inline_results=10) as h:
        job_id = await finished_job(h, every_seventh_fails(50))
        async with AsyncClient("http://joblot.test", transport=h.http._transport) as client:
            failed = [e async for e in client.results(job_id, success=False, page_size=2)]
            assert [e["index"] for e in failed] == list(range(0, 50, 7))
            succeeded = [e async for e in client.results(job_id, success=True)]
            assert len(succeeded) == 50 - len(failed)
            chunks = [c async for c in client.export(job_id, format="csv", success=False)]
            rows = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
            assert [r[0] for r in rows[1:]] == [str(i) for i in range(0, 50, 7)]
            with pytest.raises(Exception, match="InvalidParameter"):
                async for _ in client.export(job_id, format="xml"):
                    pass
