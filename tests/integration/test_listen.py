"""The socket `joblot serve` binds before anything else: connections on it get TCP_NODELAY."""

from __future__ import annotations

import asyncio
import socket

import pytest

from joblot.server import listen

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_connections_accepted_on_the_served_socket_do_not_delay_small_writes() -> None:
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
        # without it, a response written in two parts waits some 40 ms for a delayed ACK
        assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        transport.close()
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
