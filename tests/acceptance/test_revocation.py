"""Revoking a token ends its open event streams on every API node within 2 s, and revoking the
last token leaves the servers closed."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .conftest import run_cli

REVOCATION_SECONDS = 2.0  # the bound


class Stream(threading.Thread):
    """Follows one job's event stream on a node, noting when each event arrived."""

    def __init__(self, url: str, path: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.token = url, path, token
        self.events: list[tuple[float, str]] = []  # (monotonic time, event name)
        self.open = threading.Event()
        self.ended_at: float | None = None

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with (
            httpx.Client(base_url=self.url, timeout=60) as http,
            http.stream("GET", self.path, headers=headers) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event: "):
                    self.events.append((time.monotonic(), line.removeprefix("event: ")))
                    self.open.set()
        self.ended_at = time.monotonic()


def test_revoking_a_token_ends_its_streams_on_every_node_and_the_last_one_closes_them(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/joblot.db"
    made = run_cli("tokens", "create", "--tenant", "acme", "--db", db, env=joblot_env)
    token = made.stdout.strip()
    nodes = [start_server(workers=0, db=db), start_server(workers=0, db=db)]
    auth = {"Authorization": f"Bearer {token}"}
    job = (
        nodes[0]
        .http.post(
            "/api/v2/jobs",
            json={"job": {"job_type": "demo.echo", "items": [{"id": 1}]}},
            headers=auth,
        )
        .json()["job_status"]
    )  # no workers: it stays queued, and its streams stay open
    streams = [Stream(n.url, f"/api/v2/job_statuses/{job['id']}/events", token) for n in nodes]
    for stream in streams:
        stream.start()
        assert stream.open.wait(30), "the stream sent no first event"

    revoked = run_cli("tokens", "revoke", token.split("_")[1], "--db", db, env=joblot_env)
    done = time.monotonic()
    assert revoked.returncode == 0, revoked.stderr
    assert "last live token" in revoked.stderr
    for stream in streams:
        stream.join(10)
        assert stream.ended_at is not None, "the stream is still open"
        assert stream.ended_at - done < REVOCATION_SECONDS, stream.ended_at - done
        assert stream.events[-1][1] == "error"
    for node in nodes:
        with_token = node.http.get(f"/api/v2/job_statuses/{job['id']}.json", headers=auth)
        anonymous = node.http.get(f"/api/v2/job_statuses/{job['id']}.json")
        assert with_token.status_code == anonymous.status_code == 401, "the server reopened"
