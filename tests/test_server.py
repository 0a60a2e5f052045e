"""The multi-worker listening socket: accepted connections must get TCP_NODELAY."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from service.server import listening_socket


async def _nodelay_of_accepted(sock: socket.socket) -> int:
    """Serve on `sock` with asyncio (as a uvicorn worker does) and report TCP_NODELAY of the
    first accepted connection."""
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[int] = loop.create_future()

    class Report(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await loop.create_server(Report, sock=sock)
    host, port = sock.getsockname()[:2]
    _, writer = await asyncio.open_connection(host, port)
    try:
        return await asyncio.wait_for(seen, 5)
    finally:
        writer.close()
        server.close()


def test_worker_socket_is_tcp_and_connections_get_nodelay() -> None:
    config = uvicorn.Config("service.app:create_app", factory=True, host="127.0.0.1", port=0, workers=2)
    # A listener made the way uvicorn makes it (proto 0, uvicorn issue #3149): asyncio leaves
    # Nagle on for its connections. This shows the check below can fail.
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        assert asyncio.run(_nodelay_of_accepted(plain)) == 0
    finally:
        plain.close()
    sock = listening_socket(config)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.get_inheritable()  # still handed to the worker processes
        assert asyncio.run(_nodelay_of_accepted(sock)) == 1
    finally:
        sock.close()
