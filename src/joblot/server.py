"""Running joblot processes: the API server with its embedded workers, and a worker alone."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import uvicorn
import uvloop

from joblot import logs
from joblot.api import create_app
from joblot.app import App, load_app
from joblot.auth import is_loopback, mint_token, serving_open
from joblot.config import Settings
from joblot.delivery import Deliverer
from joblot.edge import EdgeProtocol, quiet_errors
from joblot.errors import ConfigError, SchemaOutOfDate
from joblot.maintenance import Maintenance
from joblot.service import Service
from joblot.store import Store, TokenCount, TokenRow, open_store
from joblot.webhooks import new_secret
from joblot.worker import Worker

log = logging.getLogger("joblot.server")
PR_SET_PDEATHSIG = 1


def configure_logging(level: str, log_format: str = "text") -> None:
    """One log format for every joblot process (and uvicorn's lines): `text` or `json`."""
    logs.configure(level, log_format)


def store_for(settings: Settings) -> Store:
    """The store `settings` name (not yet opened: backends connect on first use)."""
    return open_store(settings.database_url, settings.pool_size, sqlite_sync=settings.sqlite_sync)


async def prepare_store(settings: Settings, *, migrate_if_empty: bool) -> Store:
    """Open the store, check that it keeps what it acknowledges and check its schema; an empty
    database is migrated when allowed."""
    store = store_for(settings)
    try:
        await check_durability(store, settings)
        applied, latest = await store.schema_version()
        if applied == 0 and migrate_if_empty:
            log.info("empty database: applying %d migration(s)", latest)
            await store.migrate()
        elif applied < latest:
            raise SchemaOutOfDate(
                f"the database schema is at version {applied}, this joblot "
                f"needs {latest}: run `joblot migrate --db ...` first"
            )
    except BaseException:
        await store.close()
        raise
    return store


async def check_durability(store: Store, settings: Settings) -> None:
    """Refuse a database that may lose what joblot acknowledged; warn where joblot makes up
    for a setting itself."""
    found = await store.durability_settings()
    if found.get("fsync") == "off":
        if not settings.allow_fsync_off:
            raise ConfigError(
                "PostgreSQL runs with fsync = off: a crash of its machine can lose or corrupt "
                "jobs that joblot acknowledged. Turn fsync on, or set JOBLOT_ALLOW_FSYNC_OFF=1 "
                "for a database you can afford to lose"
            )
        log.warning(
            "PostgreSQL runs with fsync = off (JOBLOT_ALLOW_FSYNC_OFF is set): a crash of the "
            "database machine can lose or corrupt acknowledged jobs"
        )
    if found.get("synchronous_commit") == "off":
        log.warning(
            "PostgreSQL runs with synchronous_commit = off: joblot commits what it answers "
            "to clients (submits, cancels, tokens) with synchronous_commit = on itself; "
            "workers' results committed just before a database crash may be lost, and are "
            "then run again"
        )


async def create_token(settings: Settings, tenant: str) -> str:
    """Mint a token for `tenant`, store its digest, and return the token (shown once)."""
    store = await prepare_store(settings, migrate_if_empty=True)
    try:
        minted = mint_token()
        await store.create_token(minted.token_id, tenant, minted.digest, time.time())
        return minted.secret
    finally:
        await store.close()


async def webhook_secret(settings: Settings, tenant: str, *, rotate: bool) -> str:
    """The tenant's webhook signing secret, created on first use; `rotate` replaces it."""
    store = await prepare_store(settings, migrate_if_empty=True)
    try:
        found = await store.webhook_secret(tenant, new_secret(), time.time(), rotate=rotate)
        return found.secret
    finally:
        await store.close()


async def list_tokens(settings: Settings) -> list[TokenRow]:
    """Every token, without the tokens themselves."""
    store = await prepare_store(settings, migrate_if_empty=False)
    try:
        return await store.list_tokens()
    finally:
        await store.close()


async def revoke_token(settings: Settings, token_id: str) -> TokenCount | None:
    """Revoke a token; the tokens left, or None if there is no such live token."""
    store = await prepare_store(settings, migrate_if_empty=False)
    try:
        if not await store.revoke_token(token_id, time.time()):
            return None
        return await store.count_tokens()
    finally:
        await store.close()


async def check_exposure(store: Store, settings: Settings) -> None:
    """Say at start whether requests need a token; refuse to serve without tokens beyond this
    machine unless `--insecure` was given."""
    count = await store.count_tokens()
    loopback = is_loopback(settings.host)
    if count.live > 0:
        log.info("API tokens are configured: every request must carry one")
    elif serving_open(count, insecure=settings.insecure, loopback=loopback):
        log.warning(
            "no live API tokens%s: serving WITHOUT authentication on %s%s; "
            "create one with `joblot tokens create --tenant NAME`",
            " and --insecure" if settings.insecure else "",
            settings.host,
            " only (loopback)" if loopback else "",
        )
    elif count.revoked > 0:
        log.warning(
            "every API token is revoked: every request is refused until one is created "
            "(`joblot tokens create --tenant NAME`); --insecure serves without authentication"
        )
    else:
        raise ConfigError(
            f"refusing to serve on {settings.host} without API tokens: create "
            "one with `joblot tokens create --tenant NAME`, bind to 127.0.0.1, "
            "or pass --insecure"
        )


async def migrate(settings: Settings) -> list[int]:
    """Bring the database schema up to date; return the migrations applied."""
    store = store_for(settings)
    try:
        return await store.migrate()
    finally:
        await store.close()


# -- worker process ---------------------------------------------------------------------------


def run_worker(settings: Settings, parent: int | None = None) -> int:
    """Run one worker until SIGTERM or SIGINT (or, given `parent`, until that process dies);
    its exit status: 0, or `EXIT_REPLACE` when it stopped to be replaced by a fresh process."""
    app = load_app(settings.app)
    if parent is not None and not _exit_with_parent(parent):
        return 0
    worker = asyncio.run(_work(settings, app))
    if worker.stuck:
        # A handler thread that never returns would keep the interpreter from exiting.
        log.warning("exiting with %d handler(s) still stuck", worker.stuck)
        logging.shutdown()
        os._exit(worker.exit_status)
    return worker.exit_status


def _exit_with_parent(parent: int) -> bool:
    """Ask Linux to SIGTERM this process when its parent dies; False if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return os.getppid() == parent


async def _work(settings: Settings, app: App) -> Worker:
    store = await prepare_store(settings, migrate_if_empty=False)
    worker = Worker(Service(store, app, settings), app)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    log.info(
        "worker %s started: job types %s, concurrency %d",
        worker.worker_id,
        ", ".join(app.names()),
        settings.concurrency,
    )
    try:
        await worker.run()
    finally:
        await store.close()
    if worker.replace:
        log.warning("worker %s stopped to be replaced by a fresh process", worker.worker_id)
    else:
        log.info("worker %s stopped", worker.worker_id)
    return worker


# -- serve ----------------------------------------------------------------------------------


class WorkerPool:
    """The embedded worker processes of `joblot serve`, restarted if one dies."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="joblot-workers", daemon=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.to_env()}
        command = [sys.executable, "-m", "joblot", "worker", "--parent", str(os.getpid())]
        return subprocess.Popen(command, env=env)

    def start(self) -> None:
        """Start the worker processes and a thread that restarts any that dies."""
        self.procs = [self._spawn() for _ in range(self.count)]
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self.procs):
                # exit status 0 is a worker that was asked to stop (e.g. Ctrl-C reached the
                # whole process group): serve is stopping too, so it is not replaced; any
                # other (a crash, or EXIT_REPLACE: a handler got stuck) is
                if proc.poll() not in (None, 0) and not self._stopping.is_set():
                    log.warning(
                        "worker process %d exited with %s; starting another",
                        proc.pid,
                        proc.returncode,
                    )
                    self.procs[i] = self._spawn()

    def stopping(self) -> None:
        """Replace no worker from now on."""
        self._stopping.set()

    def stop(self) -> None:
        """SIGTERM every worker, give it time to finish its items, then kill what is left."""
        self._stopping.set()
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        grace = max(self.settings.lease_seconds + 10, self.settings.stop_grace_seconds + 5)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` and listening, or ConfigError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # connections whose socket says so, and without it every response written in two parts
    # waits for a delayed ACK, some 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


def new_loop() -> asyncio.AbstractEventLoop:
    """The event loop `joblot serve` runs on: uvloop's, which spends about half of the time
    asyncio's own does on each request."""
    return uvloop.new_event_loop()


class Server(uvicorn.Server):
    """uvicorn's server, which first ends the event streams and long polls it holds when asked
    to stop: they would otherwise keep their connections, and the shutdown, open for as long as
    their clients stay."""

    def __init__(self, config: uvicorn.Config, *, before_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._before_shutdown()
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    """The HTTP API in this process plus `settings.workers` worker processes."""
    app = load_app(settings.app)
    # The port first: a busy port fails before anything touches the database.
    sock = listen(settings.host, settings.port)
    loop = new_loop()
    try:
        store = loop.run_until_complete(prepare_store(settings, migrate_if_empty=True))
    except BaseException:
        sock.close()
        raise
    try:
        loop.run_until_complete(check_exposure(store, settings))
    except ConfigError:
        loop.run_until_complete(store.close())
        sock.close()
        raise
    service = Service(store, app, settings)
    pool = WorkerPool(settings, settings.workers)
    pool.start()
    log.info(
        "joblot serving on http://%s:%d (database %s, %d worker process(es))",
        settings.host,
        settings.port,
        settings.database_url,
        settings.workers,
    )

    async def on_close() -> None:
        pool.stopping()
        await store.close()

    # The API process takes its turn at the cluster-wide chores too, so a deployment
    # without workers still purges expired jobs.
    maintenance = Maintenance(service)
    deliverer = Deliverer(service)  # so that a deployment without workers delivers too
    api = create_app(service, on_close=on_close, background=[maintenance.run, deliverer.run])
    config = uvicorn.Config(
        quiet_errors(api),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through configure_logging's handler and format
        access_log=False,
        loop="none",  # serve's own loop, made by new_loop
        http=EdgeProtocol,  # httptools, with limits on headers and read timeouts
        ws="none",
        lifespan="on",
    )
    try:
        asyncio.set_event_loop(loop)
        server = Server(config, before_shutdown=api.state.end_waits)
        loop.run_until_complete(server.serve(sockets=[sock]))
    finally:
        pool.stop()
        loop.close()
