"""Running the app under uvicorn, in one process or in several worker processes.

Several workers are not run with uvicorn's own supervisor, for two measured reasons (both on the
2-core machine, one-face photo, benchmarks/load_test.py):

* uvicorn binds one socket for all its workers with `proto` 0 (uvicorn issue #3149); accepted
  connections inherit it, and asyncio turns on TCP_NODELAY only for sockets that say
  IPPROTO_TCP. Nagle's algorithm then held each keep-alive response until the client's delayed
  ACK, ~40 ms on Linux (2 workers at 40 req/s: p50 75 ms before, 22 ms now; load.json).
* On one shared socket, whichever worker wakes first accepts every pending connection in a loop
  (asyncio accepts up to `backlog` per wake-up), so a burst of new keep-alive connections lands
  on one worker while the other idles, and throughput varied from run to run by more than 2x.

So each worker binds its own socket with SO_REUSEPORT, and the kernel spreads new connections
over the workers' sockets by a hash of the connection, and every socket is created as TCP.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import uvicorn

log = logging.getLogger("agelens.server")

# uvicorn's exit code for a server that could not start (the model failed to load, ...).
STARTUP_FAILURE = 3


def _config(host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # our middleware logs every request as JSON, with its id
    )


def worker_socket(host: str, port: int) -> socket.socket:
    """A TCP listening socket that other workers can bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock  # uvicorn's server calls listen() on it


def _run_worker(host: str, port: int) -> None:
    server = uvicorn.Server(_config(host, port))
    server.run(sockets=[worker_socket(host, port)])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _metrics_dir() -> tuple[Path, bool]:
    """The folder where the workers keep their Prometheus values (service/metrics.py), emptied
    of an earlier run's files; returns it and whether we created it (and so remove it)."""
    from service.metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        # A previous run's counters would otherwise be added to this run's.
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="agelens-metrics-"))
    # Set before the workers start: they inherit it, and prometheus-client reads it on import.
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True


def _supervise(host: str, port: int, workers: int) -> int:
    """Start `workers` processes, restart any that dies, stop them all on SIGINT or SIGTERM."""
    from prometheus_client import multiprocess

    ctx = multiprocessing.get_context("spawn")  # no fork: onnxruntime and LiteRT hold threads
    metrics_dir, created = _metrics_dir()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def start() -> BaseProcess:
        p = ctx.Process(target=_run_worker, args=(host, port), name="agelens-worker")
        p.start()
        return p

    procs = [start() for _ in range(workers)]
    code = 0
    while not stop.wait(0.5):
        for i, p in enumerate(procs):
            if p.is_alive():
                continue
            if p.exitcode == STARTUP_FAILURE:
                # Restarting would fail the same way (a missing model, a taken port): give up.
                log.error("worker %s could not start; stopping", p.pid)
                stop.set()
                code = STARTUP_FAILURE
                break
            log.warning("worker %s exited with code %s; starting another", p.pid, p.exitcode)
            multiprocess.mark_process_dead(p.pid, str(metrics_dir))  # its in-flight gauge
            procs[i] = start()
    for p in procs:
        if p.is_alive():
            p.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits
    deadline = time.monotonic() + 30
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    if created:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def serve(host: str, port: int, workers: int) -> int:
    """Serve `service.app:create_app` until interrupted; returns the process exit code."""
    if workers <= 1:
        from service.metrics import MULTIPROC_ENV

        if os.environ.get(MULTIPROC_ENV):
            _metrics_dir()  # one process needs no shared folder, but one was given: start it clean
        server = uvicorn.Server(_config(host, port))
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    if port == 0:
        raise ValueError("several workers need a fixed port (each binds it with SO_REUSEPORT)")
    return _supervise(host, port, workers)
