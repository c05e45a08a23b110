"""The socket `joblot serve` binds before anything else: connections on it get TCP_NODELAY, on
asyncio's loop and on the one serve runs (uvloop)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from joblot.server import listen, new_loop


async def _accepted_socket_option() -> int:
    """TCP_NODELAY of a connection accepted on a socket made by `listen`."""
    sock = listen("127.0.0.1", 0)
    accepted: asyncio.Future[asyncio.BaseTransport] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport)

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        _, writer = await asyncio.open_connection(*sock.getsockname())
        transport = await asyncio.wait_for(accepted, 10)
        served = transport.get_extra_info("socket")
        option = int(served.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        transport.close()
        writer.close()
        return option
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("make_loop", [asyncio.new_event_loop, new_loop], ids=["asyncio", "serve"])
def test_connections_accepted_on_the_served_socket_do_not_delay_small_writes(
    make_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    loop = make_loop()
    try:
        # without it, a response written in two parts waits some 40 ms for a delayed ACK
        assert loop.run_until_complete(_accepted_socket_option()) != 0
    finally:
        loop.close()
