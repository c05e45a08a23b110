"""`joblot serve` stops promptly on SIGTERM while clients hold event streams and long polls
open: it ends them instead of waiting for their clients to leave."""

from __future__ import annotations

import signal
import threading
from typing import Any

import httpx


def _hold(url: str, headers: dict[str, str], got: dict[str, Any], key: str) -> None:
    """GET `url` to the end of its body; note the status and body under `key`."""
    with httpx.Client(timeout=120) as client, client.stream("GET", url, headers=headers) as r:
        got[f"{key} started"] = True
        got[key] = (r.status_code, b"".join(r.iter_bytes()))


def test_sigterm_ends_open_streams_and_long_polls_and_serve_exits(start_server: Any) -> None:
    server = start_server(workers=0)  # no worker: the job stays queued, nothing changes
    job = server.submit("demo.echo", [{"id": 1}])
    status_url = f"{server.url}/api/v2/job_statuses/{job['id']}.json"
    etag = server.http.get(status_url).headers["etag"]
    got: dict[str, Any] = {}
    held = {
        "long poll": (status_url, {"If-None-Match": etag, "Prefer": "wait=100"}),
        "job stream": (f"{server.url}/api/v2/job_statuses/{job['id']}/events", {}),
        "tenant stream": (f"{server.url}/api/v2/job_statuses/events", {}),
    }
    threads = [
        threading.Thread(target=_hold, args=(url, headers, got, key), daemon=True)
        for key, (url, headers) in held.items()
    ]
    for thread in threads:
        thread.start()
    streams_open = threading.Event()
    while not all(f"{key} started" in got for key in ("job stream", "tenant stream")):
        streams_open.wait(0.05)
    streams_open.wait(1.0)  # the long poll is held too by now

    server.proc.send_signal(signal.SIGTERM)
    # Not held up by its clients (it exits as SIGTERM's default would, as uvicorn does).
    assert server.proc.wait(20) == -signal.SIGTERM, server.log.read_text()
    for thread in threads:
        thread.join(10)
    assert got["long poll"][0] == 304  # answered as at its deadline: nothing changed
    assert b"event: job_status" in got["job stream"][1]  # what it had to say, then a plain end
    for key in ("job stream", "tenant stream"):
        code, body = got[key]
        assert code == 200
        assert b"event: error" not in body, body  # not told it was revoked
