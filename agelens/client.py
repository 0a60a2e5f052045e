"""Typed Python client for the agelens service (needs only httpx and pydantic).

from agelens.client import AgelensClient
with AgelensClient("http://localhost:8000") as c:
    for face in c.estimate("photo.jpg").faces:
        print(face.box, face.age, face.age_interval)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agelens.schemas import BatchResponse, ErrorResponse, EstimateResponse, Ready

ImageInput = str | Path | bytes


class AgelensError(Exception):
    """Any failure talking to the service."""


class AgelensHTTPError(AgelensError):
    """The service answered with an error status; `code` and `message` come from its JSON body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.request_id, self.retry_after = (
            status,
            code,
            message,
            request_id,
            retry_after,
        )


class AgelensConnectionError(AgelensError):
    """The service could not be reached or did not answer in time."""


def _file_tuple(image: ImageInput, name: str = "image") -> tuple[str, bytes]:
    if isinstance(image, bytes):
        return (name, image)
    path = Path(image)
    return (path.name, path.read_bytes())


def _raise_for(resp: httpx.Response) -> None:
    if resp.is_success:
        return
    try:
        body = ErrorResponse.model_validate(resp.json())
        code, message, rid = body.error.code, body.error.message, body.request_id
    except Exception:
        code, message, rid = "http_error", resp.text[:200], resp.headers.get("x-request-id")
    ra = resp.headers.get("retry-after")
    raise AgelensHTTPError(resp.status_code, code, message, rid, float(ra) if ra and ra.isdigit() else None)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to retry a request (off unless a client is given one).

    A request is retried when the connection fails or breaks before an answer (a replica that
    restarts or dies behind a load balancer), and on 503 (over capacity, or still loading), after
    the server's Retry-After when it sends one, else after an exponential backoff. Estimating an
    age changes nothing on the server, so a retried POST is safe.
    """

    retries: int = 3
    backoff: float = 0.1  # seconds before the first retry; doubled each time
    max_backoff: float = 2.0
    max_retry_after: float = 10.0  # never wait longer than this, whatever Retry-After says

    def delay(self, attempt: int, resp: httpx.Response | None) -> float:
        if resp is not None:
            value = resp.headers.get("Retry-After", "")
            if value.strip().isdigit():
                return min(float(value), self.max_retry_after)
        return min(self.backoff * 2**attempt, self.max_backoff)


def _retryable(resp: httpx.Response) -> bool:
    return resp.status_code == 503


def _params(distribution: bool, usable_only: bool) -> dict[str, str]:
    return {"distribution": str(distribution).lower(), "usable_only": str(usable_only).lower()}


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class AgelensClient:
    """Synchronous client. Use as a context manager, or call close()."""

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, headers=_headers(api_key), transport=transport
        )
        self.retry = retry
        self.retries_made = 0  # how many times a request was sent again (for monitoring)

    def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        attempts = 1 + (self.retry.retries if self.retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = self._http.request(method, url, **kw)
            except httpx.TransportError as exc:
                if last or self.retry is None:
                    raise AgelensConnectionError(f"cannot reach {self._http.base_url}: {exc}") from exc
                time.sleep(self.retry.delay(attempt, None))
                self.retries_made += 1
                continue
            if not last and self.retry is not None and _retryable(resp):
                time.sleep(self.retry.delay(attempt, resp))
                self.retries_made += 1
                continue
            _raise_for(resp)
            return resp
        raise AssertionError("unreachable")

    def estimate(
        self, image: ImageInput, distribution: bool = True, usable_only: bool = False
    ) -> EstimateResponse:
        resp = self._send(
            "POST",
            "/estimate",
            files={"image": _file_tuple(image)},
            params=_params(distribution, usable_only),
        )
        return EstimateResponse.model_validate(resp.json())

    def estimate_batch(
        self, images: list[ImageInput], distribution: bool = True, usable_only: bool = False
    ) -> BatchResponse:
        files = [("images", _file_tuple(img, f"image{i}")) for i, img in enumerate(images)]
        resp = self._send("POST", "/estimate/batch", files=files, params=_params(distribution, usable_only))
        return BatchResponse.model_validate(resp.json())

    def ready(self) -> Ready:
        resp = self._http.get("/ready")
        return Ready.model_validate(resp.json())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgelensClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAgelensClient:
    """Asynchronous twin of AgelensClient."""

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers=_headers(api_key), transport=transport
        )
        self.retry = retry
        self.retries_made = 0

    async def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        attempts = 1 + (self.retry.retries if self.retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await self._http.request(method, url, **kw)
            except httpx.TransportError as exc:
                if last or self.retry is None:
                    raise AgelensConnectionError(f"cannot reach {self._http.base_url}: {exc}") from exc
                await asyncio.sleep(self.retry.delay(attempt, None))
                self.retries_made += 1
                continue
            if not last and self.retry is not None and _retryable(resp):
                await asyncio.sleep(self.retry.delay(attempt, resp))
                self.retries_made += 1
                continue
            _raise_for(resp)
            return resp
        raise AssertionError("unreachable")

    async def estimate(
        self, image: ImageInput, distribution: bool = True, usable_only: bool = False
    ) -> EstimateResponse:
        resp = await self._send(
            "POST",
            "/estimate",
            files={"image": _file_tuple(image)},
            params=_params(distribution, usable_only),
        )
        return EstimateResponse.model_validate(resp.json())

    async def estimate_batch(
        self, images: list[ImageInput], distribution: bool = True, usable_only: bool = False
    ) -> BatchResponse:
        files = [("images", _file_tuple(img, f"image{i}")) for i, img in enumerate(images)]
        resp = await self._send(
            "POST", "/estimate/batch", files=files, params=_params(distribution, usable_only)
        )
        return BatchResponse.model_validate(resp.json())

    async def ready(self) -> Ready:
        return Ready.model_validate((await self._http.get("/ready")).json())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAgelensClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
