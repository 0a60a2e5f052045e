"""FastAPI dependencies: the engine that runs requests, the API key check, the concurrency limiter."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from service.engine import Engine
from service.errors import ApiError

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


# The checks below are `async def` although they never await: FastAPI runs a plain `def`
# dependency in its thread pool, two thread hand-offs per request that stood out in the py-spy
# profile of a worker under load (benchmarks/profile_server.py).


async def get_engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None or not request.app.state.ready:
        raise ApiError(503, "not_ready", "the model is still loading", {"Retry-After": "2"})
    return engine


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
    if state.in_flight >= state.settings.max_concurrency * state.settings.workers:
        state.metrics.rejected.inc()
        raise ApiError(503, "overloaded", "the server is at capacity; retry shortly", {"Retry-After": "1"})
    state.in_flight += 1
    state.metrics.in_flight.set(state.in_flight)
    try:
        yield
    finally:
        state.in_flight -= 1
        state.metrics.in_flight.set(state.in_flight)
