"""Running the app under uvicorn, with one or several worker processes."""

from __future__ import annotations

import inspect
import socket

import uvicorn


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """uvicorn's listening socket for several workers, marked as TCP so replies are not delayed.

    uvicorn binds the socket for its worker processes with `proto` 0 (uvicorn issue #3149).
    Accepted connections inherit it, and asyncio turns on TCP_NODELAY only for sockets that say
    IPPROTO_TCP, so with several workers Nagle's algorithm stayed on: each keep-alive response
    waited ~40 ms for the client's delayed ACK (measured: p50 55 ms from the client for 7 ms of
    work at 40 req/s). Re-wrapping the descriptor with the right protocol fixes that; the
    descriptor, its address and its inheritability stay the same.
    """
    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto != socket.IPPROTO_TCP:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


def serve(host: str, port: int, workers: int) -> int:
    """Serve `service.app:create_app` until interrupted; returns the process exit code."""
    config = uvicorn.Config(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,  # our middleware logs every request as JSON, with its id
    )
    server = uvicorn.Server(config)
    if config.workers > 1:
        from uvicorn.supervisors import Multiprocess

        # What uvicorn.run does for several workers, with our socket. The supervisor took a
        # `target` (the server's run method) up to uvicorn 0.3x; newer releases build it.
        extra = {"target": server.run} if "target" in inspect.signature(Multiprocess).parameters else {}
        Multiprocess(config, sockets=[listening_socket(config)], **extra).run()
        return 0
    server.run()
    # uvicorn.run's convention: a server that never started (model missing, port taken) exits 3.
    return 0 if server.started else 3
