"""Webhooks from real `joblot` processes: a SIGKILLed serve still delivers after a restart,
worker processes on PostgreSQL never both send one attempt, and the secret command."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from integration.conftest import DEFAULT_POSTGRES_URL, fresh_schema
from integration.receiver import Received, Receiver, Reply

from .conftest import Server, run_cli
from .pgcluster import WorkerProcess

WEBHOOK_ENV = {
    "JOBLOT_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver listens on 127.0.0.1
    "JOBLOT_WEBHOOK_RETRY_SECONDS": "0.2",
    "JOBLOT_WEBHOOK_POLL_SECONDS": "0.05",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def postgres_db(joblot_env: dict[str, str]) -> Iterator[str]:
    """A fresh, migrated schema on the test PostgreSQL server."""
    url = os.environ.get("JOBLOT_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {url}: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {url}")
    with fresh_schema(url) as db:
        migrated = run_cli("migrate", "--db", db, env=joblot_env)
        assert migrated.returncode == 0, migrated.stderr
        yield db


def submit(server: Server, url: str, items: list[dict[str, Any]], **headers: str) -> Any:
    job = {"job_type": "demo.echo", "items": items, "callback_url": url}
    response = server.http.post("/api/v2/jobs", json={"job": job}, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["job_status"]


def settled(server: Server, job_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = server.http.get(f"/api/v2/job_statuses/{job_id}/deliveries").json()["deliveries"]
        if found and found[0]["state"] != "pending":
            return found[0]
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def test_webhooks_secret_prints_the_secret_alone_and_rotates_it(
    tmp_path: Path, joblot_env: dict[str, str]
) -> None:
    db = ["--db", f"sqlite:///{tmp_path}/joblot.db"]
    first = run_cli("webhooks", "secret", "--tenant", "acme", *db, env=joblot_env)
    assert first.returncode == 0, first.stderr
    secret = first.stdout.strip()
    assert first.stdout == secret + "\n" and secret.startswith("whsec_")
    assert run_cli("webhooks", "secret", "--tenant", "acme", *db, env=joblot_env).stdout == (
        first.stdout
    )
    rotated = run_cli("webhooks", "secret", "--tenant", "acme", "--rotate", *db, env=joblot_env)
    assert rotated.returncode == 0 and rotated.stdout.strip() not in ("", secret)
    other = run_cli("webhooks", "secret", "--tenant", "globex", *db, env=joblot_env)
    assert other.stdout.strip() not in (secret, rotated.stdout.strip())
    bad = run_cli("webhooks", "secret", "--tenant", "", *db, env=joblot_env)
    assert bad.returncode == 2 and bad.stdout == ""


@pytest.mark.slow
def test_a_serve_killed_after_the_last_item_still_delivers_after_a_restart(
    start_server: Any, joblot_env: dict[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    joblot_env.update(WEBHOOK_ENV, JOBLOT_WEBHOOK_TIMEOUT_SECONDS="3")
    receiver.reply(Reply(hang=True))  # the first attempt never gets an answer
    server = start_server(workers=1)
    job = submit(server, receiver.url, [{"id": 1}, {"id": 2}])
    receiver.wait_hanging(1)  # the job's last item ran and its event is on its way
    os.killpg(server.proc.pid, signal.SIGKILL)  # serve and its worker, mid-attempt
    server.proc.wait()
    restarted = start_server(workers=1, db=server.db)
    hung, delivered = receiver.wait_for(2, timeout=60)
    assert hung.headers["webhook-id"] == delivered.headers["webhook-id"]
    assert hung.body == delivered.body
    secret = run_cli(
        "webhooks", "secret", "--tenant", "default", "--db", server.db, env=joblot_env
    ).stdout.strip()
    event = Webhook(secret).verify(delivered.body.decode(), delivered.headers)
    assert event["type"] == "job.completed"
    assert event["data"]["job_status"]["id"] == job["id"]
    delivery = settled(restarted, job["id"])
    assert delivery["state"] == "delivered"
    lost, ok = delivery["attempts"]
    assert "stopped" in lost["error"] and lost["status_code"] is None
    assert ok["status_code"] == 200


@pytest.mark.slow
def test_two_workers_on_postgresql_never_both_send_one_attempt(
    postgres_db: str, joblot_env: dict[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    joblot_env.update(WEBHOOK_ENV)
    seen: Counter[str] = Counter()

    def first_500_then_200(request: Received) -> Reply:
        seen[request.headers["webhook-id"]] += 1
        return Reply(500 if seen[request.headers["webhook-id"]] == 1 else 200)

    receiver.respond = first_500_then_200
    api = Server(postgres_db, 0, joblot_env, tmp_path / "api.log")
    workers = [WorkerProcess(postgres_db, joblot_env, tmp_path / f"w{n}.log") for n in range(2)]
    try:
        for worker in workers:
            worker.wait_started()
        jobs = [submit(api, receiver.url, [{"id": n}]) for n in range(30)]
        receiver.wait_for(60, timeout=60)
        for job in jobs:
            delivery = settled(api, job["id"])
            assert delivery["state"] == "delivered"
            assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
        time.sleep(1.0)  # five retry delays: nothing more may come
        assert len(receiver.requests) == 60
        assert sorted(seen.values()) == [2] * 30
        logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
        assert logs.count("webhook delivered") == 30
    finally:
        for worker in workers:
            worker.stop()
        api.stop()
