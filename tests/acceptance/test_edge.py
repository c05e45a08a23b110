"""The HTTP edge of a real `joblot serve`, over raw sockets: header limits, read timeouts,
clients that hang up, and JSON bodies on every error the server produces."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

STALL_LIMIT = 30.0  # seconds: the bound for closing a stalled connection


def connect(server: Any) -> socket.socket:
    """A raw TCP connection to the server."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of one HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(body)


def exchange(server: Any, request: bytes) -> tuple[int, dict[str, str], Any]:
    """Send `request` whole and read the answer until the server closes."""
    with connect(server) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # the server may answer before taking it all
        return parse(read_until_closed(sock))


def rss_mib(pid: int) -> float:
    """Resident memory of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_oversized_headers_get_a_431_json_error_without_growing_the_server(
    start_server: Any,
) -> None:
    server = start_server(workers=0)
    before = rss_mib(server.proc.pid)
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n"
    status, headers, body = exchange(server, huge)
    assert status == 431 and headers["content-type"] == "application/json"
    assert body["error"] == "RequestHeaderFieldsTooLarge" and "64 KiB" in body["description"]
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(70))
    status, _, body = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status == 431 and body["error"] == "RequestHeaderFieldsTooLarge"
    assert rss_mib(server.proc.pid) - before < 20, "the server buffered the huge header"
    fine = server.http.get("/healthz", headers={"X-Fine": "c" * 60_000})
    assert fine.status_code == 200  # just under the limit is served


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"POST /api/v2/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /api/v2/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
    ids=["header-without-colon", "bad-version", "two-lengths", "bad-chunk", "tls-hello"],
)
def test_malformed_http_gets_a_400_json_error(start_server: Any, request_bytes: bytes) -> None:
    server = start_server(workers=0)
    status, headers, body = exchange(server, request_bytes)
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["error"] == "BadRequest" and body["description"]
    log = server.log.read_text()
    assert "Traceback" not in log and "Invalid HTTP request" not in log, log


def test_a_client_hanging_up_mid_upload_is_no_server_error(start_server: Any) -> None:
    server = start_server(workers=0)
    for _ in range(3):
        with connect(server) as sock:
            sock.sendall(
                b"POST /api/v2/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n" + b'{"job": {"items": [' + b"{}," * 1000
            )
            time.sleep(0.2)  # the server is reading the body
    time.sleep(0.5)
    assert server.http.get("/healthz").status_code == 200
    log = server.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log and "unexpected" not in log, log


@pytest.mark.slow
def test_stalled_connections_are_closed_with_a_408_within_30_seconds(start_server: Any) -> None:
    server = start_server(workers=0)
    stalls = {
        "silent": b"",  # connects and never sends a byte
        "mid-headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        "mid-body": b"POST /api/v2/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"job": ',
    }

    def stall(data: bytes) -> tuple[float, bytes]:
        with connect(server) as sock:
            sock.sendall(data)
            started = time.monotonic()
            answer = read_until_closed(sock)
            return time.monotonic() - started, answer

    with ThreadPoolExecutor(len(stalls)) as pool:
        outcomes = dict(zip(stalls, pool.map(stall, stalls.values()), strict=True))
    for name, (seconds, answer) in outcomes.items():
        assert seconds < STALL_LIMIT, f"{name}: still open after {seconds:.1f} s"
        if name != "silent":
            status, _, body = parse(answer)
            assert status == 408 and body["error"] == "RequestTimeout", (name, body)
    assert server.http.get("/healthz").status_code == 200
    assert "Traceback" not in server.log.read_text()
