"""With PostgreSQL gone, the API answers 503 with Retry-After within a second (`/readyz` too,
while `/livez` stays 200), and 200 again within a second of its return."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import run_cli
from .pgcluster import ScratchCluster

ANSWER_SECONDS = 1.0  # the limit, both ways


@pytest.fixture
def cluster() -> Iterator[ScratchCluster]:
    """A PostgreSQL server of this test's own, which it may stop; removed afterwards."""
    scratch = ScratchCluster.create()
    try:
        yield scratch
    finally:
        scratch.destroy()


def timed_get(server: Any, path: str) -> tuple[int, float, Any]:
    """GET `path`: the status code, the seconds it took, and the response."""
    started = time.monotonic()
    response = server.http.get(path)
    return response.status_code, time.monotonic() - started, response


def test_requests_answer_503_at_once_while_postgresql_is_down_and_200_once_it_is_back(
    cluster: ScratchCluster, start_server: Any, joblot_env: dict[str, str]
) -> None:
    assert run_cli("migrate", "--db", cluster.url, env=joblot_env).returncode == 0
    server = start_server(workers=1, db=cluster.url)
    job = server.submit("demo.echo", [{"id": 1}])
    assert server.wait(job["id"])["status"] == "completed"
    # the listing: a finished job's own status is kept in memory, and answered without the
    # database for as long as the caller's credentials are
    path = "/api/v2/job_statuses.json"

    cluster.stop()
    answers = [timed_get(server, path) for _ in range(10)]
    for code, seconds, response in answers:
        assert code == 503, response.text
        assert response.headers["Retry-After"].isdigit()
        assert response.json()["error"] == "ServiceUnavailable"
        assert seconds < ANSWER_SECONDS, [round(s, 3) for _, s, _ in answers]
    health = server.http.get("/healthz")
    assert health.status_code == 503 and health.json()["error"] == "ServiceUnavailable"
    code, seconds, ready = timed_get(server, "/readyz")
    assert code == 503 and ready.json()["error"] == "ServiceUnavailable", ready.text
    assert ready.headers["Retry-After"].isdigit() and seconds < ANSWER_SECONDS
    assert server.http.get("/livez").json() == {"status": "ok"}, "alive all the same"

    cluster.start()
    back = cluster.wait_accepting(60)
    while True:
        code, _, response = timed_get(server, path)
        if code == 200:
            break
        assert code == 503, response.text
        assert time.monotonic() - back < ANSWER_SECONDS, "still 503 a second after its return"
        time.sleep(0.02)
    ready = server.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok", ready.text
    after = server.submit("demo.echo", [{"id": 2}])
    assert server.wait(after["id"])["status"] == "completed"  # the worker is back too
    log = server.log.read_text()
    assert log.count("cannot claim, retrying until the database is back") <= 2, log
    assert "Traceback" not in log, log
