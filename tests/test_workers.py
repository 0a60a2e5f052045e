"""`agelens serve --workers 2`: one HTTP process and two compute processes, over a real socket.

The requests are spread over the compute processes request by request, /metrics counts the
whole server, a compute process that dies fails at most the request it was given and is
replaced, and SIGTERM stops every process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest

from tests.conftest import REPO, encode, free_port


def _compute_children(pid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.Process(pid).children():
        cmd = " ".join(p.cmdline())
        if "multiprocessing.spawn" in cmd and "resource_tracker" not in cmd:
            out.append(p)
    return out


def _wait_for(predicate, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def two_workers() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, "GLOG_minloglevel": "2"}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agelens.cli", "serve", "--port", str(port), "--workers", "2"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        try:
            if not _wait_for(lambda: ready() or proc.poll() is not None, 120) or proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"server did not become ready:\n{log.read().decode()[-3000:]}")
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _photo() -> bytes:
    rng = np.random.default_rng(0)
    return encode(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), "JPEG")


def _post(url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/estimate", files={"image": ("a.jpg", data)}, timeout=30)


def test_requests_are_shared_by_both_compute_processes(two_workers) -> None:  # type: ignore[no-untyped-def]
    url, proc = two_workers
    children = _compute_children(proc.pid)
    assert len(children) == 2
    before = [sum(c.cpu_times()[:2]) for c in children]
    data = _photo()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: _post(url, data), range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    body = responses[0].json()
    assert body["faces"] == [] and body["image_width"] == 640 and body["model"]["name"] == "agelens-student"
    spent = [sum(c.cpu_times()[:2]) - b for c, b in zip(children, before, strict=True)]
    assert min(spent) > 0.2 * max(spent), f"one compute process did almost nothing: {spent}"
    # One registry for the whole server: every request is counted, whichever process ran it.
    metrics = httpx.get(f"{url}/metrics").text
    line = next(
        m
        for m in metrics.splitlines()
        if m.startswith('agelens_requests_total{method="POST",route="/estimate",status="200"}')
    )
    assert float(line.split()[-1]) >= 32


def test_a_dead_compute_process_fails_one_request_and_is_replaced(two_workers) -> None:  # type: ignore[no-untyped-def]
    url, proc = two_workers
    victim = _compute_children(proc.pid)[0]
    victim.kill()
    # Not our child: it stays a zombie until the server reaps it.
    assert _wait_for(lambda: not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE, 10)
    data = _photo()
    statuses = []
    for _ in range(6):
        r = _post(url, data)
        statuses.append(r.status_code)
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "worker_restarting" and r.headers["retry-after"] == "2"
    assert statuses.count(503) <= 1 and statuses.count(200) >= 5, statuses
    assert _wait_for(lambda: len(_compute_children(proc.pid)) == 2, 90), "no replacement process"
    assert _wait_for(lambda: httpx.get(f"{url}/ready").status_code == 200, 30)
    with ThreadPoolExecutor(4) as pool:
        assert {r.status_code for r in pool.map(lambda _: _post(url, data), range(8))} == {200}


def test_sigterm_stops_every_process(two_workers) -> None:  # type: ignore[no-untyped-def]
    _url, proc = two_workers
    children = _compute_children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully (the lifespan closes the pool), then re-raises the signal.
    assert proc.wait(40) in (0, -signal.SIGTERM)
    assert _wait_for(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 10
    )
