"""PostgreSQL: LISTEN/NOTIFY, one kept-open connection per store that wakes idle waiters."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

log = logging.getLogger("joblot.store")


class WorkListener:
    """Wakes every `wait()` caller when work is announced; reconnects when the connection drops."""

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

    async def wait(self, timeout: float) -> None:
        """Return at the next notification, or after `timeout` seconds at the latest."""
        self._start()
        wakeup = self._wakeup
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout)

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
