"""A TCP proxy that cuts an event stream once, right after its first event, and holds the
reconnection until the test lets it through: a dropped connection, made to order."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

FIRST_EVENT = b"event: job_status"


class CuttingProxy:
    """Forwards 127.0.0.1:`port` to `upstream`. The first connection is cut right after the
    first `job_status` event has passed; every later one waits for `release` before it
    reaches the server. `requests` holds each connection's request head, as sent."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.requests: list[bytes] = []
        self.cut = threading.Event()  # the first connection has been cut
        self.held = threading.Event()  # a later connection is waiting for `release`
        self.release = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed by `close`
            while True:
                client, _ = self._listener.accept()
                self._sockets.append(client)
                self._start(self._serve, client, len(self.requests) == 0)

    def _serve(self, client: socket.socket, first: bool) -> None:
        with contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            self.requests.append(head)
            if not first:
                self.held.set()
                self.release.wait(60)
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets.append(server)
            server.sendall(head)
            self._start(self._pipe, client, server)
            self._answer(server, client, cut=first)

    def _answer(self, server: socket.socket, client: socket.socket, *, cut: bool) -> None:
        """Forward the server's answer; on the first connection, only up to the end of its
        first event, then close both ends."""
        seen = b""
        while data := server.recv(65536):
            if not cut:
                client.sendall(data)
                continue
            seen += data
            start = seen.find(FIRST_EVENT)
            end = -1 if start < 0 else seen.find(b"\n\n", start)
            if end >= 0:
                client.sendall(seen[: end + 2])
                break
        if cut:
            self.cut.set()
        for end_point in (client, server):
            with contextlib.suppress(OSError):
                end_point.shutdown(socket.SHUT_RDWR)
            end_point.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self.release.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(5)
