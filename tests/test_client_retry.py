"""The client's retry policy: off by default; with one, connection failures and 503s are retried
(after Retry-After when the server sends it), and anything else is not."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from agelens.client import (
    AgelensClient,
    AgelensConnectionError,
    AgelensHTTPError,
    AsyncAgelensClient,
    RetryPolicy,
)

READY = {"ready": True, "model": {"name": "m", "version": "1.0.0", "variant": "fp32"}}


class Flaky:
    """A transport that answers with `script` in turn: an exception to raise, or a status code."""

    def __init__(self, script: list[object]) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        step = self.script.pop(0) if self.script else 200
        if isinstance(step, Exception):
            raise step
        if step == 503:
            return httpx.Response(
                503, headers={"Retry-After": "0"}, json={"error": {"code": "busy", "message": "x"}}
            )
        if step == 500:
            return httpx.Response(500, json={"error": {"code": "internal", "message": "x"}})
        return httpx.Response(200, json=READY)


def refused() -> httpx.ConnectError:
    return httpx.ConnectError("connection refused")


FAST = RetryPolicy(retries=3, backoff=0.0)


def test_no_retry_by_default() -> None:
    t = Flaky([refused()])
    with AgelensClient(transport=httpx.MockTransport(t)) as c, pytest.raises(AgelensConnectionError):
        c._send("GET", "/ready")
    assert t.calls == 1


def test_connection_errors_and_503_are_retried() -> None:
    t = Flaky([refused(), httpx.RemoteProtocolError("server disconnected"), 503])
    with AgelensClient(transport=httpx.MockTransport(t), retry=FAST) as c:
        assert c._send("GET", "/ready").json() == READY
        assert c.retries_made == 3
    assert t.calls == 4


def test_gives_up_after_its_retries() -> None:
    t = Flaky([503] * 10)
    with (
        AgelensClient(transport=httpx.MockTransport(t), retry=FAST) as c,
        pytest.raises(AgelensHTTPError) as err,
    ):
        c._send("GET", "/ready")
    assert err.value.status == 503 and t.calls == 4


def test_other_errors_are_not_retried() -> None:
    t = Flaky([500])
    with AgelensClient(transport=httpx.MockTransport(t), retry=FAST) as c, pytest.raises(AgelensHTTPError):
        c._send("GET", "/ready")
    assert t.calls == 1


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(backoff=0.1, max_backoff=0.4, max_retry_after=3.0)
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": "2"})) == 2.0
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": "60"})) == 3.0
    assert [policy.delay(a, None) for a in range(4)] == [0.1, 0.2, 0.4, 0.4]


def test_async_client_retries_too() -> None:
    t = Flaky([refused(), 503])

    async def go() -> int:
        async with AsyncAgelensClient(transport=httpx.MockTransport(t), retry=FAST) as c:
            await c._send("GET", "/ready")
            return c.retries_made

    assert asyncio.run(go()) == 2 and t.calls == 3
