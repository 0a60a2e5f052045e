"""The workers' listening sockets: TCP_NODELAY on every connection, and one socket per worker."""

from __future__ import annotations

import asyncio
import socket

from service.server import worker_socket
from tests.conftest import free_port


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


def test_worker_connections_get_nodelay() -> None:
    # A listener made the way uvicorn makes one for its workers (proto 0, uvicorn issue #3149):
    # asyncio leaves Nagle on for its connections. This shows the check below can fail.
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        plain.bind(("127.0.0.1", 0))
        assert asyncio.run(_nodelay_of_accepted(plain)) == 0
    finally:
        plain.close()
    sock = worker_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert asyncio.run(_nodelay_of_accepted(sock)) == 1
    finally:
        sock.close()


def test_every_worker_binds_the_same_port() -> None:
    port = free_port()
    first, second = worker_socket("127.0.0.1", port), worker_socket("127.0.0.1", port)
    try:
        assert first.getsockname() == second.getsockname() == ("127.0.0.1", port)
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        first.close()
        second.close()


def test_metrics_count_every_worker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With 2 workers, each connection lands on one of them; every scrape must still count the
    requests of both (prometheus-client's multiprocess mode, set up by the supervisor)."""
    import httpx
    import numpy as np

    from tests.conftest import agelens_serve, encode

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # an earlier run's file: must be wiped
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with agelens_serve("--workers", "2", env=env, ready_in_a_row=8) as url:
        image = encode(np.full((240, 320, 3), 128, dtype=np.uint8), "JPEG")
        for _ in range(20):  # a new connection each time: the kernel spreads them over the workers
            assert httpx.post(f"{url}/estimate", files={"image": ("a.jpg", image)}).status_code == 200
        pids = {p.stem.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}
        assert len(pids) == 2 and "1" not in pids, f"both workers counted requests: {pids}"
        wanted = 'agelens_requests_total{method="POST",route="/estimate",status="200"}'
        for _ in range(6):
            text = httpx.get(f"{url}/metrics").text
            line = next(m for m in text.splitlines() if m.startswith(wanted))
            assert float(line.split()[-1]) == 20.0
        assert "agelens_in_flight" in text
