"""PostgreSQL: LISTEN/NOTIFY, one kept-open connection per store that wakes idle workers and
the watcher of an API process, and the NOTIFY a store sends after it committed a change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import psycopg

from joblot.errors import JoblotError

log = logging.getLogger("joblot.store")


class WorkListener:
    """Wakes every `wait()` caller when work or a change is announced; reconnects when the
    connection drops. Notifications are counted, so a caller that passes the count its last
    `wait()` returned is not left asleep by one that arrived while it was busy."""

    def __init__(
        self,
        url: str,
        listen_sql: str,
        heartbeat_sql: str,
        *,
        retry_seconds: float = 1.0,
        heartbeat_seconds: float = 10.0,
    ) -> None:
        self._url = url
        self._listen_sql = listen_sql
        self._heartbeat_sql = heartbeat_sql
        self._retry_seconds = retry_seconds
        self._heartbeat_seconds = heartbeat_seconds
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()  # set while the LISTEN connection is up
        self._count = 0  # notifications so far (and reconnections, which may have lost some)

    @property
    def up(self) -> bool:
        """Whether the LISTEN connection is up now."""
        return self._up.is_set()

    async def wait(self, timeout: float, seen: int | None = None) -> int:
        """Return at the next notification, or after `timeout` seconds at the latest; at once
        if there were notifications since the count `seen`. Returns the count now."""
        self._start()
        if seen is None or seen == self._count:
            wakeup = self._wakeup
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout)
        return self._count

    async def listening(self, timeout: float) -> bool:
        """Start listening if not yet, and wait up to `timeout` seconds for the connection."""
        self._start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)
        return self._up.is_set()

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _start(self) -> None:
        # Started on first use, so API-only processes never hold a listening connection.
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="joblot-listen")

    def _wake(self) -> None:
        """Release everyone waiting now; later callers wait for the next notification."""
        self._count += 1
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except psycopg.Error as exc:
                # Waiters still return at their timeout meanwhile: the store degrades to polling.
                log.warning(
                    "listening for new work failed, reconnecting in %.0f s: %s",
                    self._retry_seconds,
                    exc,
                )
            except TimeoutError:
                log.warning("the listening connection stopped answering; reconnecting")
            finally:
                self._up.clear()
            await asyncio.sleep(self._retry_seconds)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
            await conn.execute(self._listen_sql)
            self._up.set()
            self._wake()  # notifications sent while we were not listening are lost: look again
            while True:
                async for _ in conn.notifies(timeout=self._heartbeat_seconds):
                    self._wake()
                # A quiet channel: prove the connection is alive, so a dead one is replaced.
                await asyncio.wait_for(conn.execute(self._heartbeat_sql), self._heartbeat_seconds)


class ChangeNotifier:
    """Announces committed changes to the watchers of every node, after the commit: at most one
    NOTIFY in flight per store, and changes committed meanwhile share the next one. One that
    is lost (the process died, the database went away) is made up by the watchers' slow
    polls."""

    def __init__(self, send: Callable[[], Awaitable[None]]) -> None:
        self._send = send
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def changed(self) -> None:
        """A change has committed: announce it soon."""
        if self._task is None:
            self._task = asyncio.create_task(self._announce(), name="joblot-notify")
        else:
            self._again = True

    async def _announce(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self._send()
                except (JoblotError, psycopg.Error) as exc:
                    log.debug("could not announce a change: %s", exc)
                except Exception:  # never a task that dies unseen
                    log.exception("announcing a change failed")
                if not self._again:
                    return
        finally:
            self._task = None

    async def close(self) -> None:
        """Stop announcing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
