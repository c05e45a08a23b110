"""Waiting on `joblot serve` over real HTTP, on both backends: long polls held by one shared
watcher answer when a worker process changes the job, and 304 at their deadline."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import start_worker

WAITERS = 1000


@pytest.fixture
def many_sockets() -> Iterator[None]:
    """Room for a thousand connections on each side (the server inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * WAITERS + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process group and wait for it."""
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


async def long_poll(port: int, path: str, etags: str, wait: int) -> tuple[int, bytes, float]:
    """One `Prefer: wait` request on a connection of its own: status code, body, and when the
    answer came (time.monotonic())."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: {etags}\r\n"
            f"Prefer: wait={wait}\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        answer = await reader.read()
        return int(answer.split(b" ", 2)[1]), answer, time.monotonic()
    finally:
        writer.close()


def test_a_long_poll_answers_when_a_worker_process_changes_the_job_and_304_at_its_deadline(
    db_url: str, start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(workers=0, db=db_url)
    job = server.submit("demo.echo", [{"id": 1}])
    path = f"/api/v2/job_statuses/{job['id']}.json"
    tag = server.http.get(path).headers["ETag"]

    started = time.monotonic()
    held = server.http.get(path, headers={"If-None-Match": tag, "Prefer": "wait=1"})
    assert held.status_code == 304 and held.headers["ETag"] == tag
    assert time.monotonic() - started >= 0.9, "held until its deadline"

    async def poll_then_work() -> tuple[int, bytes, float]:
        polling = asyncio.create_task(long_poll(server.port, path, tag, 30))
        await asyncio.sleep(0.5)
        assert not polling.done()
        worker.append(start_worker(db_url, joblot_env, tmp_path / "worker.log"))
        return await polling

    worker: list[subprocess.Popen[bytes]] = []
    try:
        code, answer, _ = asyncio.run(poll_then_work())
    finally:
        for proc in worker:
            stop(proc)
    assert code == 200, answer
    assert b'"status":"queued"' not in answer


def test_a_thousand_long_polls_on_one_job_all_wake_when_a_worker_process_completes_it(
    db_url: str,
    start_server: Any,
    joblot_env: dict[str, str],
    tmp_path: Path,
    many_sockets: None,
) -> None:
    server = start_server(workers=0, db=db_url, JOBLOT_MAX_STREAMS_PER_TOKEN=str(2 * WAITERS))
    job = server.submit("demo.echo", [{"id": 1}])
    path = f"/api/v2/job_statuses/{job['id']}.json"
    queued = server.http.get(path).headers["ETag"]
    # versions 1 (queued) and 2 (working, at the claim) are known: only completion wakes them
    working = queued.replace('.1"', '.2"')
    etags = f"{queued}, {working}"

    async def wait_all() -> tuple[list[tuple[int, bytes, float]], float]:
        polls = [
            asyncio.create_task(long_poll(server.port, path, etags, 60)) for _ in range(WAITERS)
        ]
        await asyncio.sleep(3.0)  # time for the server to take them all in
        early = [p.result()[1][:300] for p in polls if p.done()]
        assert not early, early[:3]
        changed_at = time.monotonic()
        worker.append(start_worker(db_url, joblot_env, tmp_path / "worker.log"))
        return await asyncio.wait_for(asyncio.gather(*polls), 60), changed_at

    worker: list[subprocess.Popen[bytes]] = []
    try:
        answers, changed_at = asyncio.run(wait_all())
    finally:
        for proc in worker:
            stop(proc)
    assert [code for code, _, _ in answers] == [200] * WAITERS
    assert all(b'"status":"completed"' in body for _, body, _ in answers)
    assert all(at > changed_at for _, _, at in answers)
