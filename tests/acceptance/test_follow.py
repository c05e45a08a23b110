"""`Client.events` and `AsyncClient.events` against a real `joblot serve` over real HTTP: every
status until the job ends, resumed with `Last-Event-ID` after a cut, errors as ClientError."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from joblot import AsyncClient, Client, JobStatus
from joblot.errors import ClientError

from .conftest import free_port, run_cli
from .cutting_proxy import CuttingProxy

SLOW_ITEMS = [{"id": i, "seconds": 0.05} for i in range(24)]


@pytest.fixture
def proxy_to() -> Iterator[Any]:
    """Start CuttingProxy instances in front of servers; all are closed at the end."""
    proxies: list[CuttingProxy] = []

    def start(server: Any) -> CuttingProxy:
        proxies.append(CuttingProxy(server.port))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


def _assert_followed_to_the_end(statuses: list[JobStatus], total: int) -> None:
    assert statuses[-1].status.value == "completed" and statuses[-1].progress == total
    assert all(not s.finished for s in statuses[:-1]), "nothing after the finished status"
    progress = [s.progress or 0 for s in statuses]
    assert progress == sorted(progress)
    assert len(statuses) >= 3, f"changes along the way are yielded too: {statuses}"


def test_client_events_yield_each_status_until_the_job_completes(start_server: Any) -> None:
    server = start_server(workers=1)
    job = server.submit("demo.sleep", SLOW_ITEMS)
    with Client(server.url) as client:
        statuses = list(client.events(job["id"]))
        reports = list(client.report_events(job["id"]))  # a finished job: its last status
    _assert_followed_to_the_end(statuses, len(SLOW_ITEMS))
    assert statuses[0].id == job["id"]
    assert [r.job_status for r in reports] == [statuses[-1]]
    assert reports[0].job_stats is not None and reports[0].job_stats.failures == 0


def test_async_client_events_yield_each_status_until_the_job_completes(
    start_server: Any,
) -> None:
    server = start_server(workers=1)
    items = [{**item, **({"fail": "no"} if item["id"] % 4 == 0 else {})} for item in SLOW_ITEMS]
    job = server.submit("demo.sleep", items)

    async def follow() -> tuple[list[JobStatus], list[int]]:
        async with AsyncClient(server.url) as client:
            statuses = [s async for s in client.events(job["id"])]
            failures = [
                r.job_stats.failures async for r in client.report_events(job["id"]) if r.job_stats
            ]
        return statuses, failures

    statuses, failures = asyncio.run(follow())
    _assert_followed_to_the_end(statuses, len(items))
    assert failures == [6]


def _last_event_id(head: bytes) -> str | None:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "last-event-id":
            return value.strip()
    return None


def test_a_cut_stream_resumes_with_last_event_id_and_still_gets_the_final_status(
    db_url: str, start_server: Any, proxy_to: Any
) -> None:
    server = start_server(workers=0, db=db_url)
    job = server.submit("demo.sleep", SLOW_ITEMS)
    proxy = proxy_to(server)
    seen: list[JobStatus] = []
    with Client(proxy.url) as client:
        reader = threading.Thread(target=lambda: seen.extend(client.events(job["id"])))
        reader.start()
        assert proxy.cut.wait(10) and proxy.held.wait(10), "the client connects again"
        start_server(workers=1, db=server.db)  # a worker runs the job while the client is away
        server.wait(job["id"])
        proxy.release.set()
        reader.join(30)
    assert [s.status.value for s in seen] == ["queued", "completed"], "no repeat, no loss"
    assert seen[-1].progress == len(SLOW_ITEMS)
    assert _last_event_id(proxy.requests[0]) is None
    final = server.http.get(f"/api/v2/job_statuses/{job['id']}.json").headers["etag"]
    resumed_at = int(_last_event_id(proxy.requests[1]) or 0)
    assert 0 < resumed_at < int(final.strip('"').split(".")[1])


def test_an_async_stream_cut_before_a_cancel_ends_with_the_cancelled_status(
    start_server: Any, proxy_to: Any
) -> None:
    server = start_server(workers=0)
    job = server.submit("demo.echo", [{"id": 1}, {"id": 2}])
    proxy = proxy_to(server)

    async def follow() -> list[JobStatus]:
        async with AsyncClient(proxy.url) as client:
            reader = asyncio.create_task(_collect(client.events(job["id"])))
            await asyncio.to_thread(_cancel_while_away, server, proxy, job["id"])
            return await asyncio.wait_for(reader, 30)

    seen = asyncio.run(follow())
    assert [s.status.value for s in seen] == ["queued", "failed"]
    assert seen[-1].message == "Cancelled: 2 of 2 items were skipped"
    assert _last_event_id(proxy.requests[1]) is not None


async def _collect(statuses: AsyncIterator[JobStatus]) -> list[JobStatus]:
    return [status async for status in statuses]


def _cancel_while_away(server: Any, proxy: CuttingProxy, job_id: str) -> None:
    assert proxy.cut.wait(10) and proxy.held.wait(10)
    assert server.http.post(f"/api/v2/job_statuses/{job_id}/cancel").status_code == 200
    proxy.release.set()


def test_events_raise_the_servers_errors(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/joblot.db"
    token = run_cli("tokens", "create", "--tenant", "acme", "--db", db, env=joblot_env)
    server = start_server(workers=0, db=db)
    with Client(server.url, token.stdout.strip()) as client:
        job = client.submit("demo.echo", [{"id": 1}])
        with pytest.raises(ClientError) as missing:
            next(client.events("0" * 32))
        assert (missing.value.status_code, missing.value.name) == (404, "RecordNotFound")
    with Client(server.url, "not-a-token") as stranger, pytest.raises(ClientError) as refused:
        next(stranger.events(job.id))
    assert refused.value.status_code == 401


def test_events_give_up_on_an_unreachable_server_after_the_retries() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", max_retries=1) as client,
        pytest.raises(httpx.ConnectError),
    ):
        next(client.events("0" * 32))
