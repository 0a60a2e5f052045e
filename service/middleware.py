"""ASGI middleware: request ids, body-size limit (before the body is read), metrics, access log."""

from __future__ import annotations

import json
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

log = logging.getLogger("agelens.access")


class _BodyTooLarge(Exception):
    pass


def _json_error(status: int, code: str, message: str, request_id: str) -> tuple[dict, bytes]:
    body = json.dumps({"error": {"code": code, "message": message}, "request_id": request_id}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
        ],
    }
    return start, body


class RequestContextMiddleware:
    """Outermost layer. Rejects bodies over `max_body` with 413 as soon as the Content-Length
    header (or, for chunked uploads, the running byte count) says so, so an oversized upload is
    never buffered whole. Also tags every request with an id and records metrics."""

    def __init__(self, app: ASGIApp, max_body: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status_holder = {"status": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*list(message["headers"]), (b"x-request-id", rid.encode())]
            await send(message)

        declared = headers.get(b"content-length")
        too_large = f"the request body is larger than the limit of {self.max_body} bytes"
        try:
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                start, body = _json_error(413, "payload_too_large", too_large, rid)
                status_holder["status"] = 413
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            seen = 0

            async def limited_receive() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        raise _BodyTooLarge
                return message

            await self.app(scope, limited_receive, send_wrapper)
        except _BodyTooLarge:
            if not status_holder["started"]:
                start, body = _json_error(413, "payload_too_large", too_large, rid)
                status_holder["status"] = 413
                await send(start)
                await send({"type": "http.response.body", "body": body})
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            status = str(status_holder["status"])
            if path != "/metrics":
                self.metrics.requests.labels(path, scope.get("method", ""), status).inc()
                self.metrics.latency.labels(path).observe(elapsed)
            log.info(
                "request",
                extra={
                    "request_id": rid,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": int(status),
                    "ms": round(elapsed * 1e3, 2),
                },
            )
