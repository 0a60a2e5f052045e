"""Load over real HTTP: `agelens serve` on loopback, driven by wrk and an async aiohttp generator.

For each server configuration it measures
  * closed loop with wrk (Debian's package; C, epoll): `--concurrency` connections back to back
    for `--seconds`: the maximum throughput. wrk costs far less CPU per request than a Python
    client, which matters when the generator shares the 2 cores with the server;
  * closed loop with the aiohttp generator, the same way (skipped with --no-python-closed);
  * open loop: requests sent on a fixed schedule at `--rate` req/s; latency counts from the
    scheduled send time, so a stalled server cannot hide its queue (no coordinated omission).
    Debian has no wrk2, so the open loop is Python: aiohttp (C HTTP parser) on uvloop, which
    costs a fraction of the CPU httpx did per request, CPU the server shares on this machine.
The photo is the one-face 640x480 JPEG of e2e_latency.py; every 200 response is checked to hold
exactly one face (wrk: benchmarks/wrk_post.lua). The load generator shares the 2 cores with the
server, as a sidecar would.

    .venv/bin/python benchmarks/load_test.py > benchmarks/results/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import uvloop

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
    client: aiohttp.ClientSession, body: bytes, headers: dict[str, str], rec: Recorder, t0: float
) -> None:
    try:
        async with client.post("/estimate?distribution=true", data=body, headers=headers) as r:
            payload = await r.read()
        status = str(r.status)
        if r.status == 200 and len(json.loads(payload)["faces"]) != 1:
            rec.bad_bodies += 1
    except (TimeoutError, aiohttp.ClientError) as exc:
        status = type(exc).__name__
    rec.add(status, (time.perf_counter() - t0) * 1e3)


def client(url: str) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=512, force_close=False)
    return aiohttp.ClientSession(base_url=url, connector=connector, timeout=aiohttp.ClientTimeout(total=30.0))


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
        "generator": "aiohttp",
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        **rec.summary(elapsed),
    }


WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"


def wrk_closed_loop(url: str, data: bytes, connections: int, seconds: float) -> dict:
    """wrk, one thread, `connections` keep-alive connections back to back."""
    body, headers = multipart(data)
    with tempfile.NamedTemporaryFile(suffix=".multipart") as fh:
        fh.write(body)
        fh.flush()
        env = {
            **os.environ,
            "AGELENS_WRK_BODY": fh.name,
            "AGELENS_WRK_CONTENT_TYPE": headers["content-type"],
        }
        target = f"{url}/estimate?distribution=true"

        def wrk(duration_s: int) -> subprocess.CompletedProcess[str]:
            cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "10s"]
            return subprocess.run(
                [*cmd, "-s", str(WRK_SCRIPT), target], env=env, capture_output=True, text=True
            )

        wrk(2)  # a short warm-up run first, so every worker has answered before the measured one
        out = wrk(int(seconds))
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("AGELENS_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    r = json.loads(line.removeprefix("AGELENS_JSON "))
    ok = r["requests"] - r["non200"]
    return {
        "mode": "closed",
        "generator": "wrk",
        "concurrency": connections,
        "seconds": round(r["seconds"], 1),
        "requests": r["requests"],
        "ok": ok,
        "errors": r["non200"] + r["bad_bodies"] + r["socket_errors"],
        "throughput_rps": round(ok / r["seconds"], 1),
        # wrk's latency covers every answer, 200 or not (there were none but 200s if errors is 0).
        **{k: round(r[k], 2) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")},
    }


async def open_loop(url: str, data: bytes, rate: float, seconds: float, sampler=None) -> dict:
    """Fixed-rate schedule. `sampler(elapsed_s, recorder)` is called about once a second (the
    soak uses it)."""
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
                sampler(due - start, rec)
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
        help="WORKERSxDETECTORS: uvicorn workers x face detectors per worker (AGELENS_DETECTOR_INSTANCES)",
    )
    ap.add_argument("--backend", default="litert", choices=["litert", "mediapipe"])
    ap.add_argument("--no-python-closed", action="store_true", help="closed loop with wrk only")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rates", type=float, nargs="+", default=[40.0, 100.0], help="open-loop req/s")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--detector", default="auto", choices=["auto", "short", "full"])
    ap.add_argument(
        "--variant", default="auto", choices=["auto", "fp32", "int8"], help="AGELENS_MODEL_VARIANT"
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (Debian's package)")
    data = photo()
    runs = []
    for config in args.configs:
        workers, detectors = (int(v) for v in config.split("x"))
        env = {
            "AGELENS_DETECTOR_MODEL": args.detector,
            "AGELENS_DETECTOR_BACKEND": args.backend,
            "AGELENS_DETECTOR_INSTANCES": str(detectors),
            "AGELENS_MODEL_VARIANT": args.variant,
        }
        with server(workers, env) as srv:
            model = httpx.get(f"{srv.url}/ready").json()["model"]  # the version and file answering
            closed = [wrk_closed_loop(srv.url, data, args.concurrency, args.seconds)]
            if not args.no_python_closed:
                closed.append(uvloop.run(closed_loop(srv.url, data, args.concurrency, args.seconds)))
            opened = [uvloop.run(open_loop(srv.url, data, rate, args.seconds)) for rate in args.rates]
        runs.append(
            {
                "workers": workers,
                "detector_instances": detectors,
                "model": model,
                "closed_loop": closed,
                "open_loop": opened,
            }
        )
        print(
            f"workers={workers} detectors={detectors}: "
            + "; ".join(
                f"closed ({c['generator']}) {c['throughput_rps']} req/s p99 {c['p99_ms']} ms" for c in closed
            )
            + "; "
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
                "generator": "closed loop: wrk (1 thread) and aiohttp on uvloop; open loop: aiohttp on"
                " uvloop; each in one process on the same machine",
                "detector": args.detector,
                "detector_backend": args.backend,
                "model_variant": args.variant,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
