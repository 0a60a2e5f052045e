"""Running the app under uvicorn: one HTTP process; `--workers N` (N >= 2) gives it N compute
processes (service.engine.ProcessEngine) that share the load request by request.

Earlier releases ran N uvicorn processes on one port with SO_REUSEPORT. The kernel then pinned
each keep-alive connection to one worker, so the load split as unevenly as the connections did,
and a busy worker answered 503 while the other had room; see service/engine.py.
"""

from __future__ import annotations

import os

import uvicorn

# Exit code for a server that could not start (the model failed to load, the port is taken, ...).
STARTUP_FAILURE = 3


def serve(host: str, port: int, workers: int) -> int:
    """Serve `service.app:create_app` until SIGINT or SIGTERM; returns the process exit code."""
    # The app reads its settings from the environment (service/settings.py).
    os.environ["AGELENS_WORKERS"] = str(max(1, workers))
    config = uvicorn.Config(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # our middleware logs every request as JSON, with its id
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else STARTUP_FAILURE
