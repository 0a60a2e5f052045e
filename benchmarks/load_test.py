"""Load over real HTTP: `agelens serve` on loopback, driven by an async httpx load generator.

For each worker count it measures
  * closed loop: `--concurrency` clients back to back for `--seconds`: the maximum throughput;
  * open loop: requests sent on a fixed schedule at `--rate` req/s; latency counts from the
    scheduled send time, so a stalled server cannot hide its queue (no coordinated omission).
The photo is the one-face 640x480 JPEG of e2e_latency.py; every 200 response is checked to hold
exactly one face. The load generator shares the 2 cores with the server, as a sidecar would.

    .venv/bin/python benchmarks/load_test.py > benchmarks/results/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import photo, server


def multipart(data: bytes) -> tuple[bytes, dict[str, str]]:
    """Encode the upload once with httpx's own encoder; every request reuses the bytes."""
    req = httpx.Request("POST", "http://x/estimate", files={"image": ("photo.jpg", data, "image/jpeg")})
    return req.read(), {"content-type": req.headers["content-type"]}


class Recorder:
    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.statuses: dict[str, int] = {}
        self.bad_bodies = 0

    def add(self, status: str, latency_ms: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == "200":
            self.latencies_ms.append(latency_ms)

    def summary(self, seconds: float) -> dict:
        lat = np.asarray(self.latencies_ms)
        ok = len(lat)
        total = sum(self.statuses.values())
        return {
            "requests": total,
            "ok": ok,
            "errors": total - ok + self.bad_bodies,
            "statuses": self.statuses,
            "throughput_rps": round(ok / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if ok else None,
            "p90_ms": round(float(np.percentile(lat, 90)), 2) if ok else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if ok else None,
            "max_ms": round(float(lat.max()), 2) if ok else None,
            "mean_ms": round(statistics.fmean(lat), 2) if ok else None,
        }


async def one(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str], rec: Recorder, t0: float
) -> None:
    try:
        r = await client.post("/estimate?distribution=true", content=body, headers=headers)
        status = str(r.status_code)
        if r.status_code == 200 and len(r.json()["faces"]) != 1:
            rec.bad_bodies += 1
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    rec.add(status, (time.perf_counter() - t0) * 1e3)


def client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0)


async def closed_loop(url: str, data: bytes, concurrency: int, seconds: float) -> dict:
    body, headers = multipart(data)
    rec = Recorder()
    async with client(url) as c:
        for _ in range(concurrency):  # warm the connections and every worker
            await one(c, body, headers, Recorder(), time.perf_counter())
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                await one(c, body, headers, rec, time.perf_counter())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "mode": "closed",
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        **rec.summary(elapsed),
    }


async def open_loop(url: str, data: bytes, rate: float, seconds: float, sampler=None) -> dict:
    """Fixed-rate schedule. `sampler(elapsed_s)` is called about once a second (the soak uses it)."""
    body, headers = multipart(data)
    rec = Recorder()
    async with client(url) as c:
        for _ in range(4):
            await one(c, body, headers, Recorder(), time.perf_counter())
        n = int(rate * seconds)
        start = time.perf_counter()
        tasks = []
        next_sample = 0.0
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(c, body, headers, rec, due)))
            if sampler is not None and due - start >= next_sample:
                sampler(due - start)
                next_sample += 1.0
            if len(tasks) > 4096:
                done = [t for t in tasks if t.done()]
                tasks = [t for t in tasks if not t.done()]
                del done
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    # Throughput over the time until the last answer: past capacity, answers arrive late.
    out = rec.summary(elapsed)
    out.update(mode="open", offered_rps=rate, seconds=round(elapsed, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["1x2", "2x1"],
        help="WORKERSxDETECTORS: uvicorn workers x MediaPipe graphs per worker (AGELENS_DETECTOR_INSTANCES)",
    )
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rates", type=float, nargs="+", default=[40.0, 100.0], help="open-loop req/s")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--detector", default="auto", choices=["auto", "short", "full"])
    args = ap.parse_args()
    data = photo()
    runs = []
    for config in args.configs:
        workers, detectors = (int(v) for v in config.split("x"))
        env = {"AGELENS_DETECTOR_MODEL": args.detector, "AGELENS_DETECTOR_INSTANCES": str(detectors)}
        with server(workers, env) as srv:
            closed = asyncio.run(closed_loop(srv.url, data, args.concurrency, args.seconds))
            opened = [asyncio.run(open_loop(srv.url, data, rate, args.seconds)) for rate in args.rates]
        runs.append(
            {"workers": workers, "detector_instances": detectors, "closed_loop": closed, "open_loop": opened}
        )
        print(
            f"workers={workers} detectors={detectors}: "
            f"closed {closed['throughput_rps']} req/s p99 {closed['p99_ms']} ms; "
            + "; ".join(
                f"open {o['offered_rps']:.0f} req/s: p50 {o['p50_ms']} p99 {o['p99_ms']} ms, "
                f"{o['errors']} errors"
                for o in opened
            ),
            file=sys.stderr,
        )
    print(
        json.dumps(
            {
                "what": "POST /estimate, one-face 640x480 JPEG, distribution included, server on loopback",
                "generator": "async httpx in one process on the same machine",
                "detector": args.detector,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
