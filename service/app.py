"""Application factory: `create_app()` builds the FastAPI app; the model loads in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from agelens import __version__
from service.errors import install_error_handlers
from service.estimator import load_estimator
from service.logging_config import configure_logging
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.routers import estimate, health
from service.routers.docs import install_docs
from service.settings import Settings, get_settings

log = logging.getLogger("agelens.service")
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.estimator = await run_in_threadpool(load_estimator, settings)
        app.state.ready = True
        info = app.state.estimator.info
        log.info(
            "model ready",
            extra={"model": info.name, "version": info.version, "variant": app.state.estimator.model.variant},
        )
        yield
        app.state.ready = False
        app.state.estimator.close()

    app = FastAPI(
        title="agelens",
        version=__version__,
        summary="Facial age estimation: every face's box, age, uncertainty and age distribution.",
        lifespan=lifespan,
        # Served from this process by install_docs: the defaults load them from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.ready = False
    app.state.estimator = None
    app.state.in_flight = 0
    # Requests admitted by concurrency_slot wait here, in arrival order, for one of as many
    # processing turns as there are face detectors (see dependencies.run_in_turn).
    app.state.turns = asyncio.Semaphore(settings.detector_instances)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(estimate.router)
    install_docs(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(
        RequestContextMiddleware, max_body=settings.max_upload_bytes, metrics=app.state.metrics
    )
    if (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def demo() -> FileResponse:
            return FileResponse(STATIC / "index.html")

    return app
