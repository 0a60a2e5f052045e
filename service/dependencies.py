"""FastAPI dependencies: the loaded estimator, the API key check, the concurrency limiter."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import ParamSpec, TypeVar

from fastapi import Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader

from service.errors import ApiError
from service.estimator import Estimator

P = ParamSpec("P")
R = TypeVar("R")

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


# The checks below are `async def` although they never await: FastAPI runs a plain `def`
# dependency in its thread pool, two thread hand-offs per request that stood out in the py-spy
# profile of a worker under load (benchmarks/profile_server.py).


async def get_estimator(request: Request) -> Estimator:
    estimator: Estimator | None = getattr(request.app.state, "estimator", None)
    if estimator is None or not request.app.state.ready:
        raise ApiError(503, "not_ready", "the model is still loading", {"Retry-After": "2"})
    return estimator


async def check_api_key(request: Request, key: str | None = Security(_api_key_header)) -> None:
    expected = request.app.state.settings.api_key
    if expected and not (key and secrets.compare_digest(key, expected)):
        raise ApiError(
            401, "unauthorized", "missing or wrong X-API-Key header", {"WWW-Authenticate": "ApiKey"}
        )


async def concurrency_slot(request: Request) -> AsyncIterator[None]:
    """Bounded work in progress: beyond max_concurrency the request is refused at once with 503
    and Retry-After, instead of queueing without bound (and growing memory)."""
    state = request.app.state
    if state.in_flight >= state.settings.max_concurrency:
        state.metrics.rejected.inc()
        raise ApiError(503, "overloaded", "the server is at capacity; retry shortly", {"Retry-After": "1"})
    state.in_flight += 1
    state.metrics.in_flight.set(state.in_flight)
    try:
        yield
    finally:
        state.in_flight -= 1
        state.metrics.in_flight.set(state.in_flight)


async def run_in_turn(request: Request, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run the CPU work of a request in a worker thread, at most one per face detector at a time,
    in arrival order.

    Without this, every admitted request got a thread at once and they raced for the detector's
    lock, which is not fair: under a closed-loop load some requests waited for seconds while
    others were served (8 clients on one worker, benchmarks/results/load.json: p99 771 ms
    before, 225 ms with turns).
    asyncio.Semaphore wakes its waiters first come, first served, and the threads that do run no
    longer contend for the GIL with idle ones.
    """
    async with request.app.state.turns:
        return await run_in_threadpool(fn, *args, **kwargs)
