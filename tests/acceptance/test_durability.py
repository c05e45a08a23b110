"""A 202 is on disk before it is sent: traced with strace, and across a kill -9 of serve."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import JOBLOT, free_port, run_cli
from .pgcluster import ScratchCluster

# Reads and writes of every kind a server may use on a socket (asyncio uses recvfrom and
# sendto, libuv read and write or writev), and the two sync calls.
TRACED = "trace=fsync,fdatasync,read,recvfrom,recvmsg,write,writev,sendto,sendmsg"
_LINE = re.compile(r"^(\d+)\s+(.*)$")
_SYNC = re.compile(r"^f(?:data)?sync\((\d+)<([^>]*)>")
_RESUMED = re.compile(r"^<\.\.\. f(?:data)?sync resumed>.*= 0$")


@dataclass(frozen=True)
class Trace:
    """What `strace -f -yy` wrote: one syscall a line, in the order they happened."""

    lines: list[str]

    @classmethod
    def read(cls, path: Path) -> Trace:
        return cls(path.read_text(errors="replace").splitlines())

    def first(self, needle: str, start: int = 0) -> int:
        """The number of the first line at or after `start` that holds `needle`."""
        for number in range(start, len(self.lines)):
            if needle in self.lines[number]:
                return number
        raise AssertionError(f"{needle!r} is not in the trace after line {start}")

    def syncs_done(self, of: str, start: int, end: int) -> list[str]:
        """The syncs of files whose path starts with `of` that completed between two lines."""
        pending: dict[str, str] = {}  # pid -> path of its unfinished sync
        done = []
        for number, line in enumerate(self.lines[:end]):
            match = _LINE.match(line)
            if match is None:
                continue
            pid, call = match.groups()
            sync = _SYNC.match(call)
            if sync is not None and "<unfinished ...>" in call:
                pending[pid] = sync[2]
            elif sync is not None and call.endswith("= 0"):
                done.append((number, sync[2]))
            elif _RESUMED.match(call) and pid in pending:
                done.append((number, pending.pop(pid)))
        return [path for number, path in done if number > start and path.startswith(of)]


@pytest.fixture(params=["group", "transaction", "database"])
def traced_serve(request: pytest.FixtureRequest, tmp_path: Path, joblot_env: dict[str, str]) -> Any:
    """`joblot serve --workers 0` on a fresh SQLite file, run under `strace -f`, with each
    way of syncing acknowledged writes (JOBLOT_SQLITE_SYNC)."""
    if shutil.which("strace") is None:
        pytest.skip("needs strace (Debian package strace)")
    port = free_port()
    trace = tmp_path / "strace.txt"
    command = [JOBLOT, "serve", "--db", f"sqlite:///{tmp_path}/joblot.db", "--port", str(port)]
    strace = ["strace", "-f", "-qq", "-yy", "-s", "40", "-e", TRACED, "-o", str(trace)]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [*strace, *command, "--workers", "0"],
        env={**joblot_env, "JOBLOT_SQLITE_SYNC": request.param},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        _wait_healthy(http, proc, tmp_path / "serve.log")
        yield http, trace
    finally:
        http.close()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_healthy(http: httpx.Client, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60  # slower under strace
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"joblot serve exited early:\n{log.read_text()}")
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"joblot serve did not answer in 60 s:\n{log.read_text()}")


def test_each_submit_is_synced_to_disk_between_reading_it_and_writing_its_202(
    traced_serve: Any, tmp_path: Path
) -> None:
    http, trace_path = traced_serve
    for n in range(3):
        body = {"job": {"job_type": "demo.echo", "items": [{"id": n}]}}
        response = http.post("/api/v2/jobs", json=body, headers={"X-Probe": f"submit-{n}"})
        assert response.status_code == 202, response.text
    time.sleep(0.5)  # strace writes its file as calls finish
    trace = Trace.read(trace_path)
    database = f"{tmp_path}/joblot.db"
    start = 0
    for n in range(3):
        read = trace.first("POST /api/v2/jobs", start)
        accepted = trace.first("HTTP/1.1 202", read)
        synced = trace.syncs_done(database, read, accepted)
        assert synced, (
            f"submit {n}: no sync of {database} between reading it (line {read + 1}) and "
            f"writing its 202 (line {accepted + 1}):\n"
            + "\n".join(trace.lines[read : accepted + 1])
        )
        start = accepted + 1


def test_a_job_acknowledged_right_before_serve_is_killed_is_there_after_a_restart(
    start_server: Any,
) -> None:
    server = start_server(workers=0)
    job = server.submit("demo.echo", [{"id": i} for i in range(10)])
    os.killpg(server.proc.pid, signal.SIGKILL)  # no chance to flush or close anything
    server.proc.wait()
    again = start_server(workers=1, db=server.db)
    final = again.wait(job["id"])
    assert final["status"] == "completed" and final["progress"] == 10


def test_postgresql_without_fsync_is_refused_unless_allowed_and_async_commit_is_warned_of(
    joblot_env: dict[str, str],
) -> None:
    cluster = ScratchCluster.create("fsync=off", "synchronous_commit=off")
    try:
        serve = ["serve", "--db", cluster.url, "--port", str(free_port()), "--workers", "0"]
        refused = run_cli(*serve, env=joblot_env, timeout=60)
        assert refused.returncode == 1, refused.stderr
        assert "fsync = off" in refused.stderr and "JOBLOT_ALLOW_FSYNC_OFF" in refused.stderr
        assert "migration" not in refused.stderr  # refused before touching the database
        allowed_env = {**joblot_env, "JOBLOT_ALLOW_FSYNC_OFF": "1"}
        made = run_cli("tokens", "create", "--tenant", "t", "--db", cluster.url, env=allowed_env)
        assert made.returncode == 0, made.stderr
        assert made.stdout.startswith("jl_")
        assert "fsync = off (JOBLOT_ALLOW_FSYNC_OFF is set)" in made.stderr
        assert "synchronous_commit = off" in made.stderr
    finally:
        cluster.destroy()
