"""Prometheus metrics (prometheus-client), exposed at /metrics.

With several workers (`agelens serve --workers N`), the supervisor sets PROMETHEUS_MULTIPROC_DIR
before it starts them: prometheus-client then keeps every worker's values in files there, and
whichever worker answers a scrape reports the sum over all of them. Without it, each scrape
described only the worker that the kernel happened to hand the connection to.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """A registry per app, so tests that build several apps do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "agelens_requests_total", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "agelens_request_seconds",
            "Request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.faces = Histogram(
            "agelens_faces_per_image",
            "Faces returned per image",
            buckets=(0, 1, 2, 3, 5, 10, 20, 50),
            registry=self.registry,
        )
        self.stage = Histogram(
            "agelens_stage_seconds",
            "Time per pipeline stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.unusable = Counter(
            "agelens_unusable_faces_total",
            "Faces whose quality is not usable, by reason (a face may count under several)",
            ["reason"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "agelens_in_flight",
            "Requests being processed",
            registry=self.registry,
            multiprocess_mode="livesum",  # summed over the workers alive now
        )
        self.rejected = Counter(
            "agelens_rejected_total", "Requests rejected as over capacity", registry=self.registry
        )

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's registry, or every worker's in multiprocess mode."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
