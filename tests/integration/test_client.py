"""Client and AsyncClient against the real joblot app: in-process over ASGI, and over a socket."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from joblot.api import create_app
from joblot.client import AsyncClient, Client
from joblot.config import Settings
from joblot.demo import app as demo_app
from joblot.errors import ClientError
from joblot.models import Status
from joblot.service import Service
from joblot.store import open_store
from joblot.worker import Worker

BASE = "http://joblot.test"
UNKNOWN_ID = "0" * 32


@dataclass
class Seen:
    """One request as it reached the server."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class Tap:
    """A real ASGI layer in front of the app: records requests, can answer 429 a few times."""

    app: ASGIApp
    throttle: int = 0
    retry_after: str = "0"
    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            query = scope["query_string"].decode()
            self.seen.append(Seen(scope["method"], scope["path"], query, headers))
            if self.throttle > 0:
                self.throttle -= 1
                body = {"error": "TooManyRequests", "description": "slow down"}
                throttled = JSONResponse(body, 429, headers={"Retry-After": self.retry_after})
                await throttled(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def paths(self, suffix: str) -> list[Seen]:
        """The recorded requests whose path ends with `suffix`."""
        return [s for s in self.seen if s.path.endswith(suffix)]


@dataclass
class Server:
    """A real joblot server (SQLite store, service, API) with an optional worker."""

    service: Service
    tap: Tap
    worker: Worker | None = None
    task: asyncio.Task[None] | None = None

    def start_worker(self) -> None:
        """Start a worker on the running event loop."""
        self.worker = Worker(self.service, demo_app)
        self.task = asyncio.create_task(self.worker.run())

    async def stop_worker(self) -> None:
        """Stop the worker gracefully and wait for it."""
        if self.worker is not None and self.task is not None:
            self.worker.stop()
            await self.task


@asynccontextmanager
async def joblot_server(tmp_path: Path, *, worker: bool = True) -> AsyncIterator[Server]:
    """The real app on a fresh SQLite database; with `worker`, one runs on this loop."""
    settings = Settings(database_url=f"sqlite:///{tmp_path}/j.db", lease_seconds=2)
    store = open_store(settings.database_url)
    await store.migrate()
    service = Service(store, demo_app, settings)
    server = Server(service, Tap(create_app(service)))
    if worker:
        server.start_worker()
    try:
        yield server
    finally:
        await server.stop_worker()
        await store.close()


@asynccontextmanager
async def in_process(
    tmp_path: Path, *, worker: bool = True, max_retries: int = 5
) -> AsyncIterator[tuple[AsyncClient, Server]]:
    """An AsyncClient talking to a real server through httpx's ASGITransport."""
    async with joblot_server(tmp_path, worker=worker) as server:
        transport = httpx.ASGITransport(app=server.tap)
        async with AsyncClient(BASE, transport=transport, max_retries=max_retries) as client:
            yield client, server


# -- AsyncClient, in process ---------------------------------------------------------------


def test_wait_returns_completed_status_with_failed_item_in_results(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path) as (client, _):
            items: list[dict[str, object]] = [{"id": 1}, {"id": 2, "fail": "bad row"}, {"id": 3}]
            queued = await client.submit("demo.echo", items)
            assert queued.status is Status.QUEUED
            final = await client.wait(queued.id, timeout=10)
            assert final.id == queued.id
            assert final.status is Status.COMPLETED
            assert (final.total, final.progress) == (3, 3)
            assert final.message is not None
            assert final.message.startswith("Completed at ")
            assert final.results == [
                {"index": 0, "id": 1, "action": "echo", "status": "Echoed", "success": True},
                {"index": 1, "id": 2, "action": "echo", "success": False,
                 "error": "DemoFailure", "details": "bad row"},
                {"index": 2, "id": 3, "action": "echo", "status": "Echoed", "success": True},
            ]  # fmt: skip

    asyncio.run(scenario())


def test_wait_long_polls_with_etag_and_prefer_wait_instead_of_busy_polling(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False) as (client, server):
            queued = await client.submit("demo.echo", [{"id": 1}])
            waiting = asyncio.create_task(client.wait(queued.id, timeout=10, poll=5))
            await asyncio.sleep(0.5)  # the job is queued with no worker: wait must hold
            assert not waiting.done()
            server.start_worker()
            final = await waiting
            assert final.status is Status.COMPLETED
            polls = [s for s in server.tap.paths(f"/{queued.id}.json") if s.method == "GET"]
            long_polls = [s for s in polls if "if-none-match" in s.headers]
            assert long_polls, "wait() never sent a conditional request"
            assert all(s.headers["prefer"] == "wait=5" for s in long_polls)
            assert len(polls) < 10  # held by the server, not a tight loop

    asyncio.run(scenario())


def test_wait_raises_timeout_error_while_job_stays_queued(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False) as (client, _):
            queued = await client.submit("demo.echo", [{"id": 1}])
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await client.wait(queued.id, timeout=1)
            assert 0.9 <= time.monotonic() - started < 3

    asyncio.run(scenario())


def test_list_follows_cursors_across_pages_yielding_every_job_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False) as (client, server):
            ids = [(await client.submit("demo.echo", [{"id": n}])).id for n in range(5)]
            listed = [status.id async for status in client.list(page_size=2)]
            assert sorted(listed) == sorted(ids)
            pages = server.tap.paths("/job_statuses.json")
            assert len(pages) == 3
            assert "page%5Bafter%5D" not in pages[0].query
            assert all("page%5Bafter%5D" in p.query for p in pages[1:])

    asyncio.run(scenario())


def test_results_pages_through_job_larger_than_inline_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path) as (client, server):
            queued = await client.submit("demo.echo", [{"id": n} for n in range(1500)])
            final = await client.wait(queued.id, timeout=15)
            assert final.status is Status.COMPLETED
            assert (final.total, final.progress, final.results) == (1500, 1500, None)
            entries = [entry async for entry in client.results(queued.id)]
            assert [e["index"] for e in entries] == list(range(1500))
            assert all(e["id"] == e["index"] and e["success"] for e in entries)
            assert len(server.tap.paths("/results.json")) == 15

    asyncio.run(scenario())


def test_show_many_chunks_ids_and_keeps_the_order_asked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False) as (client, server):
            first = await client.submit("demo.echo", [{"id": 1}])
            second = await client.submit("demo.echo", [{"id": 2}])
            unknown = [f"{n:032x}" for n in range(1, 121)]
            found = await client.show_many([second.id, *unknown, first.id])
            assert [s.id for s in found] == [second.id, first.id]
            assert len(server.tap.paths("/show_many.json")) == 2  # 122 ids: 100 + 22
            assert await client.show_many([]) == []

    asyncio.run(scenario())


def test_cancel_of_queued_job_fails_it_and_says_items_were_skipped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False) as (client, _):
            queued = await client.submit("demo.echo", [{"id": 1}, {"id": 2}, {"id": 3}])
            cancelled = await client.cancel(queued.id)
            assert cancelled.status is Status.FAILED
            assert cancelled.message is not None
            assert "skipped" in cancelled.message
            assert "3" in cancelled.message
            assert (await client.get(queued.id)).status is Status.FAILED

    asyncio.run(scenario())


def test_unknown_job_id_raises_client_error_record_not_found(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False) as (client, _):
            for job_id in (UNKNOWN_ID, "not-an-id"):
                with pytest.raises(ClientError) as caught:
                    await client.get(job_id)
                assert (caught.value.status_code, caught.value.name) == (404, "RecordNotFound")
                assert job_id in caught.value.description

    asyncio.run(scenario())


def test_unknown_job_type_raises_client_error_unknown_job_type(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False) as (client, _):
            with pytest.raises(ClientError) as caught:
                await client.submit("no.such.type", [{"id": 1}])
            assert (caught.value.status_code, caught.value.name) == (422, "UnknownJobType")
            assert "demo.echo" in caught.value.description  # says what the server runs
            assert str(caught.value).startswith("422 UnknownJobType: ")

    asyncio.run(scenario())


def test_same_idempotency_key_returns_the_same_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False) as (client, _):
            items = [{"id": 1}, {"id": 2}]
            first = await client.submit("demo.echo", items, idempotency_key="order-17")
            again = await client.submit("demo.echo", items, idempotency_key="order-17")
            other = await client.submit("demo.echo", items, idempotency_key="order-18")
            assert again.id == first.id
            assert other.id != first.id

    asyncio.run(scenario())


def test_get_honours_retry_after_on_429_then_succeeds(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False) as (client, server):
            queued = await client.submit("demo.echo", [{"id": 1}])
            server.tap.throttle, server.tap.retry_after = 1, "1"
            started = time.monotonic()
            assert (await client.get(queued.id)).id == queued.id
            assert time.monotonic() - started >= 0.95  # slept the Retry-After: 1 it was sent
            assert len(server.tap.paths(f"/{queued.id}.json")) == 2

    asyncio.run(scenario())


def test_throttling_beyond_max_retries_raises_client_error_429(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False, max_retries=2) as (client, server):
            server.tap.throttle = 10
            with pytest.raises(ClientError) as caught:
                await client.get(UNKNOWN_ID)
            assert (caught.value.status_code, caught.value.name) == (429, "TooManyRequests")
            assert len(server.tap.seen) == 3  # the first try and two retries

    asyncio.run(scenario())


def test_submit_is_retried_on_429_only_with_an_idempotency_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with in_process(tmp_path, worker=False) as (client, server):
            server.tap.throttle = 1
            with pytest.raises(ClientError) as caught:
                await client.submit("demo.echo", [{"id": 1}])
            assert caught.value.status_code == 429
            assert [s async for s in client.list()] == []
            server.tap.throttle = 1
            keyed = await client.submit("demo.echo", [{"id": 1}], idempotency_key="k1")
            assert [s.id async for s in client.list()] == [keyed.id]

    asyncio.run(scenario())


# -- over a real socket --------------------------------------------------------------------


@dataclass
class Hangup:
    """A TCP listener that accepts connections and closes them at once, counting them."""

    sock: socket.socket
    accepted: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def serve(self) -> None:
        """Accept until asked to stop."""
        self.sock.settimeout(0.05)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()


def test_get_retries_connection_errors_but_plain_submit_does_not() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    hangup = Hangup(listener)
    thread = threading.Thread(target=hangup.serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    async def scenario() -> None:
        async with AsyncClient(url, max_retries=2) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(UNKNOWN_ID)
            assert hangup.accepted == 3
            with pytest.raises(httpx.TransportError):
                await client.submit("demo.echo", [{"id": 1}])
            assert hangup.accepted == 4

    try:
        asyncio.run(scenario())
    finally:
        hangup.stopping.set()
        thread.join()
        listener.close()


@pytest.fixture
def live_url(tmp_path: Path) -> Iterator[str]:
    """A real joblot server with a worker, served by uvicorn on a free 127.0.0.1 port."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    servers: queue.Queue[uvicorn.Server] = queue.Queue()

    async def serve() -> None:
        async with joblot_server(tmp_path) as joblot:
            config = uvicorn.Config(
                joblot.tap, host="127.0.0.1", port=port, log_level="warning", ws="none"
            )
            server = uvicorn.Server(config)
            servers.put(server)
            await server.serve(sockets=[sock])

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    server = servers.get(timeout=10)
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the server thread died before uvicorn started"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def test_sync_client_over_socket_submits_waits_and_reads_results(live_url: str) -> None:
    with Client(live_url) as client:
        queued = client.submit("demo.echo", [{"id": "a"}, {"id": "b", "fail": "bad row"}])
        final = client.wait(queued.id, timeout=10)
        assert final.status is Status.COMPLETED
        assert final.url == f"{live_url}/api/v2/job_statuses/{queued.id}.json"
        entries = list(client.results(queued.id, page_size=1))
        assert [(e["id"], e["success"]) for e in entries] == [("a", True), ("b", False)]
        assert entries[1]["error"] == "DemoFailure"
        assert client.get(queued.id) == final
        assert client.show_many([queued.id]) == [final]


def test_sync_iterator_left_early_then_client_closes_cleanly(live_url: str) -> None:
    with Client(live_url) as client:
        ids = {client.submit("demo.echo", [{"id": n}]).id for n in range(3)}
        for status in client.list(page_size=1):
            assert status.id in ids
            break
        assert {s.id for s in client.list(page_size=2)} == ids
    with pytest.raises(RuntimeError, match="closed"):
        client.get(UNKNOWN_ID)


def test_sync_wait_raises_timeout_error_when_job_outlasts_timeout(live_url: str) -> None:
    with Client(live_url) as client:
        queued = client.submit("demo.sleep", [{"id": 1, "seconds": 5}])
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.wait(queued.id, timeout=1)
        assert time.monotonic() - started < 3
        assert not client.get(queued.id).finished
