"""`GET /api/v2/job_statuses/events` on `joblot serve` over real HTTP, on both backends: every
change of the tenant's jobs (new ones too), nobody else's, resumed with Last-Event-ID without
missing any, kept open by comment lines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from .conftest import run_cli

STREAM = "/api/v2/job_statuses/events"
Event = dict[str, Any]


def token(db_url: str, env: dict[str, str], tenant: str) -> dict[str, str]:
    """The Authorization header of a new token of `tenant`."""
    minted = run_cli("tokens", "create", "--tenant", tenant, "--db", db_url, env=env)
    assert minted.returncode == 0, minted.stderr
    return {"Authorization": f"Bearer {minted.stdout.strip()}"}


async def read_stream(
    url: str, headers: dict[str, str], until: Callable[[list[Event]], bool], seconds: float = 30
) -> list[Event]:
    """The stream's blocks (each its fields; `data` decoded, comments under `comment`) until
    `until` holds for them; then the connection is dropped."""
    blocks: list[Event] = []

    async def read() -> None:
        async with (
            httpx.AsyncClient(timeout=None) as http,
            http.stream("GET", url + STREAM, headers=headers) as response,
        ):
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            block: Event = {}
            async for line in response.aiter_lines():
                if line:
                    name, _, value = line.partition(":")
                    block[name or "comment"] = value.strip()
                    continue
                if "data" in block:
                    block["data"] = orjson.loads(block["data"])
                if block:
                    blocks.append(block)
                block = {}
                if until(blocks):
                    return

    await asyncio.wait_for(read(), seconds)
    return blocks


def statuses(blocks: list[Event]) -> list[dict[str, Any]]:
    """The JobStatuses of the `job_status` events among `blocks`."""
    return [b["data"]["job_status"] for b in blocks if b.get("event") == "job_status"]


def finished(job_ids: set[str]) -> Callable[[list[Event]], bool]:
    """Until every one of `job_ids` was seen completed."""
    return lambda blocks: (
        job_ids <= {s["id"] for s in statuses(blocks) if s["status"] == "completed"}
    )


def last_id(blocks: list[Event]) -> str:
    """The Last-Event-ID a client would send after these blocks."""
    ids = [b["id"] for b in blocks if "id" in b]
    assert ids, blocks
    return str(ids[-1])


def test_the_tenant_stream_carries_every_change_of_its_jobs_and_none_of_another_tenant(
    db_url: str, start_server: Any, joblot_env: dict[str, str]
) -> None:
    acme, other = token(db_url, joblot_env, "acme"), token(db_url, joblot_env, "other")
    server = start_server(workers=1, db=db_url)

    async def follow() -> list[Event]:
        reading = asyncio.create_task(
            read_stream(server.url, acme, lambda b: len(ids) == 2 and finished(ids)(b))
        )
        await asyncio.sleep(1.0)  # the stream is open before the jobs exist
        for headers in (acme, other, acme):
            job = await asyncio.to_thread(server.submit, "demo.echo", [{"id": 1}], **headers)
            if headers is acme:
                ids.add(job["id"])
            else:
                theirs.add(job["id"])
        return await reading

    ids: set[str] = set()
    theirs: set[str] = set()
    blocks = asyncio.run(follow())
    seen = statuses(blocks)
    assert {s["id"] for s in seen} == ids, "the tenant's jobs only, new ones included"
    assert all(s["results"] is None for s in seen), "results are never inline here"
    assert all("job_stats" in b["data"] for b in blocks if "data" in b)
    assert blocks[0].get("retry") and "id" in blocks[1], "a position before anything happened"
    assert not theirs & {s["id"] for s in seen}


def test_a_resumed_tenant_stream_misses_nothing_that_changed_while_it_was_away(
    db_url: str, start_server: Any, joblot_env: dict[str, str]
) -> None:
    acme = token(db_url, joblot_env, "acme")
    server = start_server(workers=1, db=db_url)

    async def follow() -> tuple[list[Event], list[Event], set[str]]:
        reading = asyncio.create_task(
            read_stream(server.url, acme, lambda b: bool(first) and finished(first)(b))
        )
        await asyncio.sleep(1.0)
        first.add((await asyncio.to_thread(server.submit, "demo.echo", [{"id": 1}], **acme))["id"])
        before = await reading
        away = set()
        for n in range(3):  # while nobody listens: submitted, run and completed
            job = await asyncio.to_thread(server.submit, "demo.echo", [{"id": n}], **acme)
            away.add(job["id"])
        for job_id in away:
            await asyncio.to_thread(wait_completed, server, job_id, acme)
        resume = {**acme, "Last-Event-ID": last_id(before)}
        after = await read_stream(server.url, resume, finished(away))
        return before, after, away

    first: set[str] = set()
    before, after, away = asyncio.run(follow())
    assert away <= {s["id"] for s in statuses(after) if s["status"] == "completed"}
    assert last_id(after) != last_id(before)


def wait_completed(server: Any, job_id: str, headers: dict[str, str]) -> None:
    """Poll the job (with `headers`) until it completed."""
    for _ in range(600):
        status = server.http.get(f"/api/v2/job_statuses/{job_id}.json", headers=headers).json()
        if status["job_status"]["status"] == "completed":
            return
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not complete")


def test_a_quiet_tenant_stream_sends_comment_lines_and_stays_open(
    start_server: Any, joblot_env: dict[str, str]
) -> None:
    server = start_server(workers=0, JOBLOT_KEEPALIVE_SECONDS="0.3")
    blocks = asyncio.run(
        read_stream(server.url, {}, lambda b: sum("comment" in x for x in b) >= 3, seconds=20)
    )
    assert [b["comment"] for b in blocks if "comment" in b][:3] == ["keep-alive"] * 3
    assert not statuses(blocks)


def test_the_tenant_stream_counts_against_the_tokens_cap_of_open_streams(
    start_server: Any, joblot_env: dict[str, str]
) -> None:
    server = start_server(workers=0, JOBLOT_MAX_STREAMS_PER_TOKEN="1")

    async def two() -> httpx.Response:
        holding = asyncio.create_task(read_stream(server.url, {}, lambda b: False, seconds=10))
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(base_url=server.url) as http:
            refused = await http.get(STREAM)
        holding.cancel()
        return refused

    refused = asyncio.run(two())
    assert refused.status_code == 429 and refused.json()["error"] == "TooManyRequests"
    assert refused.headers["Retry-After"].isdigit()
