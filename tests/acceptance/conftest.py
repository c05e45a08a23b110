"""Fixtures that run the real `joblot` command as processes and talk to it over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from integration.conftest import fresh_schema, postgres_url  # noqa: F401 (a fixture, used here)

JOBLOT = str(Path(sys.executable).with_name("joblot"))
TESTS = str(Path(__file__).resolve().parent.parent)  # on PYTHONPATH, for test apps
MISBEHAVING_APP = "acceptance.misbehaving:app"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A running `joblot serve` process."""

    def __init__(
        self,
        db: str,
        workers: int,
        env: dict[str, str],
        log: Path,
        *,
        args: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db
        self.env = env
        self.log = log
        self._out = log.open("ab")
        command = [JOBLOT, "serve", "--db", db, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*command, "--workers", str(workers), *args],
            env=env,
            cwd=cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"joblot serve exited early:\n{self.log.read_text()}")
            try:
                if self.http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"joblot serve did not answer in 30 s:\n{self.log.read_text()}")

    def submit(self, job_type: str, items: list[dict[str, Any]], **headers: str) -> Any:
        """POST a job; return the JobStatus."""
        response = self.http.post(
            "/api/v2/jobs", headers=headers, json={"job": {"job_type": job_type, "items": items}}
        )
        assert response.status_code == 202, response.text
        return response.json()["job_status"]

    def status(self, job_id: str) -> Any:
        """GET a JobStatus."""
        response = self.http.get(f"/api/v2/job_statuses/{job_id}.json")
        assert response.status_code == 200, response.text
        return response.json()["job_status"]

    def wait(
        self, job_id: str, timeout: float = 60, until: tuple[str, ...] = ("completed", "failed")
    ) -> Any:
        """Poll until the job reaches one of `until`."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status["status"] in until:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"job still {status['status']} after {timeout} s: {status}")
            time.sleep(0.05)

    def all_results(self, job_id: str, size: int = 100) -> list[dict[str, Any]]:
        """Every result entry, walking the results pages to the end."""
        entries: list[dict[str, Any]] = []
        url: str | None = f"/api/v2/job_statuses/{job_id}/results.json?page[size]={size}"
        while url:
            body = self.http.get(url).json()
            entries.extend(body["results"])
            url = body["links"]["next"]
        return entries

    def stop(self) -> None:
        """SIGTERM the server (and its workers) and wait for it."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.http.close()
        self._out.close()


@pytest.fixture
def joblot_env(tmp_path: Path) -> dict[str, str]:
    """Environment for joblot processes: short leases so lost items come back quickly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLOT_")}
    env.update(JOBLOT_LEASE_SECONDS="1", JOBLOT_LOG_LEVEL="info", PYTHONPATH=TESTS)
    return env


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each backend: a new SQLite file, or a new PostgreSQL schema.

    Ask for it before `start_server`, so that the servers stop before the schema is dropped.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/joblot.db"
        return
    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def start_server(tmp_path: Path, joblot_env: dict[str, str]) -> Iterator[Any]:
    """Start `joblot serve` processes; all are stopped at the end of the test."""
    servers: list[Server] = []

    def start(
        workers: int = 1,
        db: str | None = None,
        *,
        args: tuple[str, ...] = (),
        cwd: Path | None = None,
        **env: str,
    ) -> Server:
        """`env` adds JOBLOT_* (or other) variables to this server's environment; `args` are
        more `joblot serve` flags, `cwd` its working folder."""
        database = db or f"sqlite:///{tmp_path}/joblot.db"
        log = tmp_path / f"serve{len(servers)}.log"
        server = Server(database, workers, {**joblot_env, **env}, log, args=args, cwd=cwd)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of one process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
                members.append(int(stat.parent.name))
    return members


def start_worker(db_url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A `joblot worker` process of its own (in a session of its own), logging to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [JOBLOT, "worker", "--db", db_url],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def count_rows(db_url: str, table: str, job_id: str, where: str = "") -> int:
    """How many rows of `table` belong to `job_id` right now, read from the database itself."""
    condition = f" AND {where}" if where else ""
    if db_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as conn:
            sql = f"SELECT count(*) FROM {table} WHERE job_id = ?{condition}"
            return int(conn.execute(sql, (job_id,)).fetchone()[0])
    with psycopg.connect(db_url) as pg:
        sql = f"SELECT count(*) FROM {table} WHERE job_id = %s{condition}"
        row = pg.execute(sql, (job_id,)).fetchone()
        return 0 if row is None else int(row[0])


def run_cli(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the `joblot` command as a real process."""
    return subprocess.run(
        [JOBLOT, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
