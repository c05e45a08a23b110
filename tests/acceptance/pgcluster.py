"""Helpers of the PostgreSQL cluster tests: a scratch server they may stop, and workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from integration.conftest import _in_ci

from .conftest import JOBLOT, free_port


def skip_or_fail(reason: str) -> NoReturn:
    """Skip locally; fail under CI, where the PostgreSQL tests must not quietly stop running."""
    if _in_ci():
        pytest.fail(f"CI is set, so the PostgreSQL tests must run: {reason}", pytrace=False)
    pytest.skip(reason)


PG_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def _as_postgres(*command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL server command as the `postgres` user (the server refuses root)."""
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *command],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass(frozen=True)
class ScratchCluster:
    """A throwaway PostgreSQL server of the test's own (initdb in a temporary folder, its own
    port, trust auth on 127.0.0.1), so a test may stop and start it without disturbing the
    machine's server or any other test using that one."""

    root: Path
    port: int
    url: str
    settings: tuple[str, ...] = ()  # server settings `name=value`, e.g. "fsync=off"

    @classmethod
    def create(cls, *settings: str) -> ScratchCluster:
        """Make and start a new server with `settings`; `destroy()` removes it."""
        if not PG_BINARIES or shutil.which("runuser") is None:
            skip_or_fail("a scratch PostgreSQL server needs Debian's postgresql and runuser")
        root = Path(tempfile.mkdtemp(prefix="joblot-pg-"))
        shutil.chown(root, "postgres", "postgres")
        port = free_port()
        cluster = cls(root, port, f"postgresql://postgres@127.0.0.1:{port}/postgres", settings)
        made = _as_postgres(
            str(PG_BINARIES[-1] / "initdb"), "-D", str(root / "data"), "-A", "trust",
            "-U", "postgres", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        if made.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise AssertionError(f"initdb failed: {made.stderr}")
        cluster.start()
        return cluster

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _as_postgres(str(PG_BINARIES[-1] / "pg_ctl"), "-D", str(self.root / "data"), *args)

    def _launch(self) -> subprocess.CompletedProcess[str]:
        extra = "".join(f" -c {setting}" for setting in self.settings)
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1{extra}"
        return self._ctl("-l", str(self.root / "server.log"), "-o", options, "-w", "start")

    def start(self) -> None:
        """Start the server; returns once it accepts connections."""
        done = self._launch()
        assert done.returncode == 0, f"pg_ctl start failed: {done.stderr}{self.server_log()}"

    def stop(self) -> None:
        """Shut the server down (fast mode: open connections are cut) and wait until it is."""
        done = self._ctl("-m", "fast", "-w", "stop")
        assert done.returncode == 0, f"pg_ctl stop failed: {done.stderr}"

    def server_log(self) -> str:
        """What the server logged, to explain a failure."""
        log = self.root / "server.log"
        return log.read_text(errors="replace") if log.exists() else ""

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
            self._launch()  # it may have been starting already: then this fails, harmlessly
        self.wait_accepting(60)

    def destroy(self) -> None:
        """Stop the server and delete its files."""
        self._ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


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
