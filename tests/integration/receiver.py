"""A real HTTP receiver of webhook deliveries, in the test process: answers as scripted and
keeps every request it got."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one request; `hang` holds it until the receiver closes."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    at: float  # time.monotonic()
    path: str
    headers: dict[str, str]
    body: bytes

    def event(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1; replies follow `script`, then `default`."""

    def __init__(
        self, default: Reply | None = None, respond: Callable[[Received], Reply] | None = None
    ) -> None:
        self.default = default or Reply()
        self.respond = respond  # when given, decides every reply from the request
        self.script: deque[Reply] = deque()
        self.requests: list[Received] = []
        self.hanging = 0  # requests held open right now
        self.released = threading.Event()
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order."""
        with self._changed:
            self.script.extend(replies)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Block until `count` requests arrived; every request so far."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.requests)} of {count} requests in {timeout} s")
                self._changed.wait(left)
            return list(self.requests)

    def wait_hanging(self, count: int, timeout: float = 20.0) -> None:
        """Block until `count` requests are held open at once."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.hanging < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.hanging} of {count} requests hanging")
                self._changed.wait(left)

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, request: Received) -> Reply:
        with self._changed:
            self.requests.append(request)
            if self.respond is not None:
                reply = self.respond(request)
            else:
                reply = self.script.popleft() if self.script else self.default
            if reply.hang:
                self.hanging += 1
            self._changed.notify_all()
        return reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = receiver._answer(Received(time.monotonic(), self.path, headers, body))
                if reply.hang:
                    receiver.released.wait()
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        return Handler
