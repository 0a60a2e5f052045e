"""Where a request's CPU work runs: in this process, or in a pool of compute processes.

* `LocalEngine` (one worker): the Estimator in this process; requests take turns on its face
  detectors in worker threads.
* `ProcessEngine` (`AGELENS_WORKERS` >= 2): this process only speaks HTTP; each of N child
  processes holds its own Estimator and handles one request at a time. A request goes to
  whichever child is idle, first come first served, so the load is shared request by request.

The pool replaced N uvicorn processes on one SO_REUSEPORT port. There the kernel pinned each
keep-alive connection to one worker, so the load split as unevenly as the connections did
(2 workers at 100 req/s: 25.2 against 19.4 CPU-seconds in 30 s), one worker's queue overflowed
into 503s while the other had room (the soak at 80 % in benchmarks/results/soak.json), and
/metrics described whichever worker a scrape reached. A child that dies (a crash in native
code, the OOM killer) fails only its own request, with 503, and is replaced.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from fastapi.concurrency import run_in_threadpool

from agelens.schemas import EstimateResponse, ModelInfo
from service.errors import ApiError
from service.settings import Settings

log = logging.getLogger("agelens.service")

# A child must load and warm up its models within this many seconds.
START_TIMEOUT_S = 180.0


class Engine(Protocol):
    info: ModelInfo | None

    async def start(self) -> None: ...

    async def estimate(self, data: bytes, include_distribution: bool) -> EstimateResponse: ...

    async def estimate_many(
        self, items: list[bytes], include_distribution: bool
    ) -> list[EstimateResponse | Exception]: ...

    async def close(self) -> None: ...


class LocalEngine:
    """The Estimator in this process, run in worker threads, at most one request per face
    detector at a time, in arrival order.

    Without turns, every admitted request got a thread at once and they raced for the detector's
    lock, which is not fair: under a closed-loop load some requests waited for seconds while
    others were served (8 clients on one worker: p99 771 ms before turns, 225 ms with them).
    asyncio.Semaphore wakes its waiters first come, first served, and the threads that do run no
    longer contend for the GIL with idle ones.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.info: ModelInfo | None = None
        self._estimator: Any = None
        self._turns = asyncio.Semaphore(settings.detector_instances)

    async def start(self) -> None:
        from service.loading import load_estimator

        self._estimator = await run_in_threadpool(load_estimator, self.settings)
        self.info = self._estimator.info

    async def _run(self, method: str, *args: Any) -> Any:
        async with self._turns:
            return await run_in_threadpool(getattr(self._estimator, method), *args)

    async def estimate(self, data: bytes, include_distribution: bool) -> EstimateResponse:
        return await self._run("estimate", data, include_distribution)  # type: ignore[no-any-return]

    async def estimate_many(
        self, items: list[bytes], include_distribution: bool
    ) -> list[EstimateResponse | Exception]:
        return await self._run("estimate_many", items, include_distribution)  # type: ignore[no-any-return]

    async def close(self) -> None:
        if self._estimator is not None:
            self._estimator.close()


def _child_main(conn: Connection, settings_json: str) -> None:
    """A compute process: load the Estimator, then answer (method, args) messages until the
    parent closes the pipe. Image errors (ValueError) go back as values; the parent maps them."""
    # Ctrl-C reaches the whole process group; the parent shuts the pool down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from service.loading import load_estimator
    from service.logging_config import configure_logging

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level)
    try:
        estimator = load_estimator(settings)
    except Exception as exc:  # reported to the parent, which refuses to start
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", estimator.info))
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            break  # the parent is gone or shutting down
        try:
            conn.send(("ok", getattr(estimator, method)(*args)))
        except ValueError as exc:
            conn.send(("error", exc))
        except Exception as exc:
            logging.getLogger("agelens.service").exception("compute process error in %s", method)
            conn.send(("failed", type(exc).__name__))
    estimator.close()


class _Child:
    def __init__(self, index: int, settings_json: str) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork: onnxruntime and LiteRT hold threads
        self.conn, child_end = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=_child_main, args=(child_end, settings_json), name=f"agelens-compute-{index}", daemon=True
        )
        self.process.start()
        child_end.close()
        self.index = index

    def wait_ready(self) -> ModelInfo:
        if not self.conn.poll(START_TIMEOUT_S):
            raise RuntimeError(
                f"compute process {self.index} did not load its model in {START_TIMEOUT_S:.0f} s"
            )
        kind, payload = self.conn.recv()
        if kind != "ready":
            raise RuntimeError(f"compute process {self.index} could not start: {payload}")
        return payload  # type: ignore[no-any-return]

    def call(self, method: str, args: tuple[Any, ...]) -> tuple[str, Any]:
        self.conn.send((method, args))
        return self.conn.recv()  # type: ignore[no-any-return]

    def stop(self, timeout: float) -> None:
        self.conn.close()  # the child sees EOF and exits
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class ProcessEngine:
    """N compute processes behind one idle queue (asyncio.Queue serves its waiters in order)."""

    def __init__(self, settings: Settings, size: int) -> None:
        # The children need no HTTP settings, and each serves one request at a time.
        self._settings_json = settings.model_copy(update={"detector_instances": 1}).model_dump_json()
        self.size = size
        self.info: ModelInfo | None = None
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: dict[int, _Child] = {}
        self._closing = False
        self._respawns: set[asyncio.Task[None]] = set()

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children.values() if c.process.pid is not None]

    async def start(self) -> None:
        children = [_Child(i, self._settings_json) for i in range(self.size)]
        self._children = {c.index: c for c in children}
        try:
            infos = await asyncio.gather(*(run_in_threadpool(c.wait_ready) for c in children))
        except BaseException:
            for c in children:
                c.stop(5)
            raise
        self.info = infos[0]
        for c in children:
            self._idle.put_nowait(c)

    async def _respawn(self, index: int) -> None:
        child = _Child(index, self._settings_json)
        self._children[index] = child
        try:
            await run_in_threadpool(child.wait_ready)
        except Exception:
            log.exception("compute process %s could not be restarted", index)
            return
        log.warning("compute process %s restarted (pid %s)", index, child.process.pid)
        self._idle.put_nowait(child)

    async def _call(self, method: str, *args: Any) -> Any:
        child = await self._idle.get()
        try:
            kind, payload = await run_in_threadpool(child.call, method, args)
        except (EOFError, OSError) as exc:
            # The child died under this request. Only this request fails; a fresh child replaces it.
            log.error("compute process %s (pid %s) died: %s", child.index, child.process.pid, exc)
            child.stop(1)
            if not self._closing:
                task = asyncio.create_task(self._respawn(child.index))
                self._respawns.add(task)
                task.add_done_callback(self._respawns.discard)
            raise ApiError(
                503, "worker_restarting", "the compute process died; retry shortly", {"Retry-After": "2"}
            ) from exc
        self._idle.put_nowait(child)
        if kind == "error":
            raise payload
        if kind != "ok":
            raise RuntimeError(f"compute process failed: {payload}")
        return payload

    async def estimate(self, data: bytes, include_distribution: bool) -> EstimateResponse:
        return await self._call("estimate", data, include_distribution)  # type: ignore[no-any-return]

    async def estimate_many(
        self, items: list[bytes], include_distribution: bool
    ) -> list[EstimateResponse | Exception]:
        return await self._call("estimate_many", items, include_distribution)  # type: ignore[no-any-return]

    async def close(self) -> None:
        self._closing = True
        for task in list(self._respawns):
            task.cancel()
        await asyncio.gather(*(run_in_threadpool(c.stop, 30) for c in self._children.values()))


def make_engine(settings: Settings) -> LocalEngine | ProcessEngine:
    return ProcessEngine(settings, settings.workers) if settings.workers > 1 else LocalEngine(settings)
