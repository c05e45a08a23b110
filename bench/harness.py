"""Start and stop real `joblot serve` processes for benchmarks, describe the machine, and run
a benchmark from its arguments to its exit status.

Each server leads its own process group (a new session), so that it and its worker
processes are stopped together: SIGTERM to `serve` (as a supervisor would send it), then to
the whole group, then SIGKILL to whatever is left, with a warning naming the survivors.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

import joblot

READY_SECONDS = 30.0
STOP_SECONDS = 40.0  # serve gives its workers lease_seconds + 10 to drain; half for serve
COMMAND_SECONDS = 60.0  # `joblot migrate` and `joblot tokens create`
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

Found = TypeVar("Found")


class BenchError(Exception):
    """The benchmark could not measure what it set out to (the server misbehaved)."""


@dataclass
class Server:
    """A `joblot serve` process, the leader of its own process group."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, to explain a failure."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def peak_rss_mib(self) -> tuple[float, float]:
        """Peak resident memory (VmHWM) of the serve process and of its largest worker."""
        serve, workers = 0.0, [0.0]
        for pid in group_members(self.proc.pid):
            mib = _vm_hwm_kib(pid) / 1024
            if pid == self.proc.pid:
                serve = mib
            else:
                workers.append(mib)
        return serve, max(workers)


def group_members(pgid: int) -> list[int]:
    """The live processes of one process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # after "pid (comm)": state, ppid, pgrp
                members.append(int(stat.parent.name))
    return members


def _vm_hwm_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def joblot_command() -> list[str]:
    """The `joblot` console script next to this Python, else on PATH, else `python -m`."""
    beside = Path(sys.executable).with_name("joblot")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("joblot")
    return [found] if found else [sys.executable, "-m", "joblot"]


def start_server(
    db_url: str,
    workers: int,
    log: Path,
    extra_env: dict[str, str],
    command: list[str] | None = None,
) -> Server:
    """Start `joblot serve` in a new session so that its workers can be signalled together.
    `command` runs instead of `joblot` (e.g. a wrapper that counts its queries)."""
    port = free_port()
    env = {**os.environ, "JOBLOT_LOG_LEVEL": "warning", **extra_env}
    argv = [
        *(command or joblot_command()),
        "serve",
        "--workers",
        str(workers),
        "--port",
        str(port),
        "--db",
        db_url,
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(proc, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, client: httpx.Client) -> None:
    """Wait until GET /healthz answers 200."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"joblot serve exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.TransportError):
            if client.get("/healthz").status_code == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"joblot serve did not answer in {READY_SECONDS:.0f} s:\n{server.log_tail()}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM meanwhile, so that a second Ctrl-C cannot cut a cleanup short."""
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def stop_group(proc: subprocess.Popen[bytes], grace: float = STOP_SECONDS) -> None:
    """SIGTERM `serve`, then its group, within `grace` seconds in all; then SIGKILL the rest."""
    with signals_held():
        _stop_group(proc, grace)


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    pgid = proc.pid  # start_new_session made the server the leader of its own group
    # First the way a supervisor stops it: SIGTERM to `serve` alone, which stops its workers.
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    if _wait_group_gone(proc, grace / 2):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if _wait_group_gone(proc, grace / 2):
        return
    survivors = group_members(pgid)
    print(
        f"warning: {len(survivors)} server process(es) {survivors} survived SIGTERM for "
        f"{grace:.0f} s; sending SIGKILL",
        file=sys.stderr,
    )
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _wait_group_gone(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """True once no process of the group is left (the leader reaped), within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so that it does not linger as a zombie
        if not _group_alive(proc.pid):
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def running_server(
    db_url: str,
    workers: int,
    log: Path,
    extra_env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> Iterator[tuple[Server, httpx.Client]]:
    """A ready server and a keep-alive client for it; both are gone on exit."""
    server = start_server(db_url, workers, log, extra_env or {}, command)
    try:
        with httpx.Client(base_url=server.url, timeout=120.0) as client:
            wait_ready(server, client)
            yield server, client
    finally:
        stop_group(server.proc)


# -- databases ------------------------------------------------------------------------------


def run_joblot(*args: str) -> str:
    """Run a `joblot` command to completion; its stdout, or BenchError with its output."""
    try:
        done = subprocess.run(
            [*joblot_command(), *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"joblot {args[0]} took more than {COMMAND_SECONDS:.0f} s") from exc
    if done.returncode != 0:
        raise BenchError(f"joblot {' '.join(args[:2])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def create_token(db_url: str, tenant: str) -> str:
    """Mint an API token with `joblot tokens create` (before the server starts)."""
    return run_joblot("tokens", "create", "--tenant", tenant, "--db", db_url).strip()


def postgres_url() -> str:
    """The PostgreSQL database to use: env JOBLOT_BENCH_POSTGRES_URL, else the local test one."""
    return os.environ.get("JOBLOT_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def with_query(url: str, **params: str) -> str:
    """`url` with query parameters added (libpq reads `options`, `application_name`, ...)."""
    parts = urlsplit(url)
    extra = urlencode(params, quote_via=quote, safe="")
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


@dataclass(frozen=True)
class Schema:
    """A fresh PostgreSQL schema and the URL that puts every connection in it."""

    name: str
    url: str


@contextlib.contextmanager
def postgres_schema(base_url: str, application_name: str) -> Iterator[Schema]:
    """A new, migrated schema; dropped on exit (stop the servers using it first).

    The URL selects the schema with `options=-c search_path=...` and tags every connection
    with `application_name`, so pg_stat_activity tells this benchmark's sessions apart.
    """
    name = f"joblot_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        url = with_query(
            base_url, options=f"-c search_path={name}", application_name=application_name
        )
        run_joblot("migrate", "--db", url)
        yield Schema(name, url)
    finally:
        with signals_held():
            drop_schema(base_url, name)


@contextlib.contextmanager
def database(db: str, tmp: Path, name: str) -> Iterator[str]:
    """The database a `--db` of 'sqlite', 'postgres' or a URL stands for: a fresh SQLite file
    `<name>.db` in `tmp`, a fresh schema whose sessions are named `joblot-bench-<name>`, or the
    URL given."""
    if db == "sqlite":
        yield f"sqlite:///{tmp / name}.db"
    elif db == "postgres":
        with postgres_schema(postgres_url(), f"joblot-bench-{name}") as schema:
            yield schema.url
    else:
        yield db


def drop_schema(base_url: str, name: str) -> None:
    """DROP SCHEMA ... CASCADE, waiting at most 30 s for locks; a warning if that fails."""
    try:
        with psycopg.connect(base_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET lock_timeout = '30s'")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        print(f"warning: could not drop schema {name} ({exc}); drop it by hand", file=sys.stderr)


def postgres_named(db: str) -> str | None:
    """The PostgreSQL URL that a `--db` of 'sqlite', 'postgres' or a URL stands for; None for
    SQLite."""
    if db == "sqlite" or db.startswith("sqlite:"):
        return None
    return postgres_url() if db == "postgres" else db


def postgres_description(base_url: str) -> str:
    """The PostgreSQL server's version and the settings that bound its commit rate."""
    names = ("fsync", "synchronous_commit", "wal_sync_method", "shared_buffers")
    with psycopg.connect(base_url, autocommit=True, connect_timeout=10) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = [f"{n} {row[0]}" for n in names if (row := conn.execute(f"SHOW {n}").fetchone())]
    return f"- PostgreSQL: {version[0] if version else '?'} ({', '.join(settings)})"


# -- the machine ----------------------------------------------------------------------------


def machine() -> list[str]:
    """CPU, cores, RAM and versions, as markdown list lines."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.splitlines()
        if line.startswith("model name")
    ]
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    kib = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0
    )
    return [
        f"- CPU: {models[0] if models else platform.processor() or 'unknown'}",
        f"- cores: {os.cpu_count()}",
        f"- RAM: {kib / 1024 / 1024:.1f} GiB",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        f"- SQLite: {sqlite3.sqlite_version}",
        f"- joblot: {joblot.__version__} ({source_revision()})",
        f"- load average (1, 5, 15 min) at start: {load_average()}",
    ]


def load_average() -> str:
    """/proc/loadavg's first three numbers: other work on the machine skews every result."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def source_revision() -> str:
    """The git commit of the code under test and whether the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    state = "src/ modified" if dirty.stdout.strip() else "clean"
    return f"git {head.stdout.strip()}, {state}"


# -- running a benchmark --------------------------------------------------------------------


def run_bench(
    args: argparse.Namespace,
    measure: Callable[[argparse.Namespace, Path], Found],
    render: Callable[[Found, argparse.Namespace, list[str]], str],
    *,
    postgres: str | None = None,
    stopped: str = "servers stopped, temp files removed",
) -> int:
    """Measure in a temporary folder, print the rendered report; the exit status.

    `render` gets the machine's description (and that of the PostgreSQL server at `postgres`),
    taken before `measure` runs, as the report's header. SIGTERM stops a run as Ctrl-C does, so
    that every `finally` stops its servers, drops its schemas and removes the folder either way;
    then `stopped` says what was cleaned up, and the status is 130. A failure is 1.
    """
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="joblot-bench-") as name:
        try:
            header = _header(postgres)
            found = measure(args, Path(name))
        except (BenchError, psycopg.Error) as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"bench interrupted; {stopped}", file=sys.stderr)
            return 130
    print(render(found, args, header))
    return 0


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _header(postgres: str | None) -> list[str]:
    """The machine, and the PostgreSQL server at `postgres` if any, as markdown list lines."""
    lines = machine()
    if postgres is not None:
        try:
            lines.append(postgres_description(postgres))
        except psycopg.Error as exc:
            raise BenchError(f"cannot reach PostgreSQL at {postgres}: {exc}") from exc
    return lines
