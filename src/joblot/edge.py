"""The HTTP edge: uvicorn's httptools protocol (its speed unchanged) plus the limits it lacks.

- Request line and headers together are limited to MAX_HEAD_BYTES: `431` and the connection
  closed, having buffered at most that plus one read.
- A connection must deliver a request's headers within HEAD_SECONDS of its start (or of the
  request's first byte), and a body may pause at most BODY_IDLE_SECONDS while the app waits
  for it: `408` (when no answer was started) and the connection closed. A stalled connection
  is gone within 20 s; an idle keep-alive one after uvicorn's 5 s.
- The errors the protocol answers itself (malformed HTTP, the two above) have the JSON body
  of every other error, `{"error": ..., "description": ...}`; a client's mistakes are logged at
  debug level only.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("joblot.edge")

MAX_HEAD_BYTES = 64 * 1024
HEAD_SECONDS = 10.0
BODY_IDLE_SECONDS = 10.0
LINGER_SECONDS = 2.0  # after an error answer, what the client still sends is dropped this long


def error_response(
    status: int, name: str, description: str, extra: list[tuple[bytes, bytes]]
) -> bytes:
    """A whole HTTP/1.1 error response with a JSON body, closing the connection."""
    body = orjson.dumps({"error": name, "description": description})
    head = [b"HTTP/1.1 %d %s" % (status, http.HTTPStatus(status).phrase.encode())]
    head += [name_ + b": " + value for name_, value in extra]
    head += [
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Refused(Exception):
    """Stops the parser from a callback: the request is answered with `response` and closed."""


class EdgeProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with limits on the request head, read timeouts and JSON errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_read = 0  # bytes read since this request began, while its head is not in
        self._head_size = 0  # bytes of its request line and headers parsed so far
        self._refusal: bytes | None = None
        self._lingering = False

    # -- connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(HEAD_SECONDS, self._head_timed_out)  # the first request must come

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, but every error it answers is JSON, and the head is limited."""
        if self._lingering:
            return  # answered and closing: what else comes is dropped unread
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            log.debug("ignored an Upgrade header (joblot serves plain HTTP only)")
        except httptools.HttpParserError as exc:
            if self._refusal is None:
                log.debug("refused a malformed request: %s", exc)
                self._refusal = self._error(400, "BadRequest", f"not valid HTTP/1.1: {exc}")
            self._send_refusal()
            return
        if self._in_head:
            self._head_read += len(data)  # unparsed bytes (a header still coming) count too
            if self._head_read > MAX_HEAD_BYTES:
                self._refuse_head()
                self._send_refusal()

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers some requests itself with this: as JSON."""
        self._refusal = self._refusal or self._error(400, "BadRequest", msg)
        self._send_refusal()

    def _unsupported_upgrade_warning(self) -> None:
        log.debug("ignored an Upgrade header (joblot serves plain HTTP only)")

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_read, self._head_size = True, 0, 0
        self._arm(HEAD_SECONDS, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count(len(name) + len(value) + 4)  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(BODY_IDLE_SECONDS, self._body_timed_out)  # on_message_complete ends it
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm(BODY_IDLE_SECONDS, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # -- limits -----------------------------------------------------------------------------

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            self._refuse_head()
            raise Refused()  # stops the parser; data_received sends the refusal

    def _refuse_head(self) -> None:
        log.debug("refused a request whose headers exceed %d bytes", MAX_HEAD_BYTES)
        self._refusal = self._error(
            431,
            "RequestHeaderFieldsTooLarge",
            f"the request line and headers exceed {MAX_HEAD_BYTES // 1024} KiB",
        )

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._in_head:
            log.debug("closed a connection whose request headers took over %.0f s", HEAD_SECONDS)
            description = f"the request headers did not arrive within {HEAD_SECONDS:.0f} s"
            self._refusal = self._error(408, "RequestTimeout", description)
            self._send_refusal()
        elif not self.transport.is_closing():  # connected, never sent a byte
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self.transport.is_closing():
            return
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            self._arm(BODY_IDLE_SECONDS, self._body_timed_out)  # waiting on us, not the client
            return
        log.debug("closed a connection whose body paused over %.0f s", BODY_IDLE_SECONDS)
        if not cycle.response_started:
            description = f"the request body stopped arriving for {BODY_IDLE_SECONDS:.0f} s"
            self.transport.write(self._error(408, "RequestTimeout", description))
        cycle.disconnected = True  # the app's reads end, and whatever it sends is dropped
        cycle.message_event.set()
        self.transport.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _error(self, status: int, name: str, description: str) -> bytes:
        return error_response(status, name, description, self.server_state.default_headers)

    def _send_refusal(self) -> None:
        """Answer the request being read with the refusal (unless its answer has begun) and
        close the connection."""
        self._disarm()
        current = None if self._in_head else self.cycle  # a request has a cycle once its head is in
        if current is not None and not current.response_complete:
            current.disconnected = True  # the app's reads end, and whatever it sends is dropped
            current.message_event.set()
        if self.transport.is_closing() or self._lingering:
            return
        if self._refusal is None or (current is not None and current.response_started):
            self.transport.close()
            return
        # Closing with unread data makes the kernel reset the connection, which can discard
        # the answer before the client reads it: so finish writing, then read and drop what
        # the client still sends for a moment before closing (a "lingering close").
        self.transport.write(self._refusal)
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_SECONDS, self.transport.close)

    def eof_received(self) -> None:
        if self._lingering:  # the client has sent all it will: close now
            self.transport.close()

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def quiet_errors(app: ASGIApp) -> ASGIApp:
    """`app` for uvicorn: an unexpected error, which the app has logged and answered with its
    JSON 500 already, is not raised again for uvicorn to log a second traceback (or to answer
    with its own plain-text 500); a client that went away is no error at all."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, watched)
        except ClientDisconnect:
            log.debug("the client went away during %s", scope.get("path"))
        except Exception:
            if scope["type"] != "http" or started:
                return
            body = orjson.dumps(
                {"error": "InternalError", "description": "the server failed; it has been logged"}
            )
            await send_json(send, 500, body)

    return serve


async def send_json(send: Callable[[Message], Awaitable[None]], status: int, body: bytes) -> None:
    """A whole JSON response through ASGI `send`."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
