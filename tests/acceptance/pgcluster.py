"""Helpers of the PostgreSQL cluster test: the local server it stops and starts, and workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from integration.conftest import START_POSTGRES, _in_ci

from .conftest import JOBLOT

_LOOPBACK = ("", "127.0.0.1", "localhost", "::1")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip locally; fail under CI, where the PostgreSQL tests must not quietly stop running."""
    if _in_ci():
        pytest.fail(f"CI is set, so the PostgreSQL tests must run: {reason}", pytrace=False)
    pytest.skip(reason)


def require_postgres(url: str) -> None:
    """Skip (fail under CI) unless PostgreSQL answers at `url`; the same rule as integration/."""
    try:
        with psycopg.connect(url, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        skip_or_fail(
            f"PostgreSQL is not reachable at {url} ({str(exc).strip()}); start it with "
            f"`{START_POSTGRES}` or point JOBLOT_TEST_POSTGRES_URL at a server"
        )


@dataclass(frozen=True)
class LocalCluster:
    """A PostgreSQL cluster on this machine, stopped and started with Debian's pg_ctlcluster."""

    version: str
    name: str
    url: str

    def stop(self) -> None:
        """Shut the server down (fast mode: open connections are cut) and wait until it is."""
        self._ctl("stop")

    def start(self) -> None:
        """Start the server; returns once it is up."""
        self._ctl("start")

    def accepting(self) -> bool:
        """Whether the server accepts connections right now (`pg_isready`)."""
        ready = subprocess.run(
            ["pg_isready", "-q", "-d", self.url], check=False, timeout=30, capture_output=True
        )
        return ready.returncode == 0

    def wait_accepting(self, timeout: float) -> float:
        """Poll `pg_isready` until the server accepts connections; the monotonic time it did."""
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL did not accept connections in {timeout} s")
            time.sleep(0.05)
        return time.monotonic()

    def ensure_running(self) -> None:
        """Start the server unless it accepts connections: a failed test must not leave it down."""
        if not self.accepting():
            # exit status 2 means "already running": the server was merely still starting
            subprocess.run(self._command("start"), check=False, timeout=120, capture_output=True)
        self.wait_accepting(60)

    def _command(self, action: str) -> list[str]:
        return ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action]

    def _ctl(self, action: str) -> None:
        done = subprocess.run(
            self._command(action), check=False, timeout=120, capture_output=True, text=True
        )
        assert done.returncode == 0, f"pg_ctlcluster {action} failed: {done.stderr}"


def local_cluster(url: str) -> LocalCluster | None:
    """The pg_ctlcluster cluster serving `url`, if it runs on this machine; else None."""
    params = conninfo_to_dict(url)
    host = str(params.get("host") or "")
    if not (host in _LOOPBACK or host.startswith("/")):
        return None
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        return None
    port = str(params.get("port") or 5432)
    listed = subprocess.run(
        ["pg_lsclusters", "--no-header"], check=False, capture_output=True, text=True, timeout=30
    )
    for line in listed.stdout.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == port:
            return LocalCluster(version, name, url)
    return None


class WorkerProcess:
    """A running `joblot worker` process, in a process group of its own."""

    def __init__(self, db: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [JOBLOT, "worker", "--db", db],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_started(self, timeout: float = 30) -> None:
        """Wait for the worker's "started" log line (its store is open and checked)."""
        deadline = time.monotonic() + timeout
        while " started: job types " not in self.log.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"joblot worker exited early:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"joblot worker did not start in {timeout} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the worker: it gets no chance to report or hand anything back."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM the worker, wait for it to drain, SIGKILL it if it does not."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()
