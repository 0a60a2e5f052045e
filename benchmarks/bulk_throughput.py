"""Bulk inference against the HTTP path, in the same run on the same one-face photos.

1. HTTP: `agelens serve` with one worker per core, loaded closed-loop by the aiohttp generator of
   load_test.py at several concurrencies, each request a different photo; the best is the
   HTTP path's maximum requests per second on this host (wrk, when installed, costs the 2
   shared cores less CPU; here it is not, so the figure is what a Python client reaches).
2. Bulk: `agelens batch` (local engine, one process per core) over the same photos as files,
   written to parquet; images per second from the job's own clock (worker start included).

    .venv/bin/python benchmarks/bulk_throughput.py --images 600 --out benchmarks/results/bulk_throughput.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import DATASET, server  # noqa: E402
from load_test import Recorder, client, multipart, one  # noqa: E402

from training.data import read_split  # noqa: E402


def photos(n: int) -> list[bytes]:
    """UTKFace test faces, each at 180 px on a plain 640x480 canvas (the e2e benchmarks' photo)."""
    rows = [r for r in read_split(REPO / "training/splits/utkface.csv") if r.split == "test"][:n]
    out = []
    for r in rows:
        canvas = Image.new("RGB", (640, 480), (200, 205, 210))
        canvas.paste(Image.open(DATASET / r.filename).convert("RGB").resize((180, 180)), (230, 120))
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


async def http_closed_loop(url: str, blobs: list[bytes], concurrency: int, seconds: float) -> dict:
    bodies = [multipart(b) for b in blobs]
    rec = Recorder()
    async with client(url) as c:
        for body, headers in bodies[:concurrency]:
            await one(c, body, headers, Recorder(), time.perf_counter())
        end = time.perf_counter() + seconds
        counter = iter(range(10**9))

        async def worker() -> None:
            while time.perf_counter() < end:
                body, headers = bodies[next(counter) % len(bodies)]
                await one(c, body, headers, rec, time.perf_counter())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, **rec.summary(elapsed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--concurrency", default="2,4,8")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    blobs = photos(args.images)
    report: dict = {"host": platform.processor() or platform.machine(), "cores": cores, "images": len(blobs)}
    with server(workers=cores) as srv:
        runs = [
            asyncio.run(http_closed_loop(srv.url, blobs, int(c), args.seconds))
            for c in args.concurrency.split(",")
        ]
    best = max(runs, key=lambda r: r["throughput_rps"])
    report["http"] = {"runs": runs, "max_requests_per_second": best["throughput_rps"]}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i, b in enumerate(blobs):
            (folder / f"{i:05d}.jpg").write_bytes(b)
        out = Path(tmp) / "ages.parquet"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "agelens.cli", "batch", str(folder), "--out", str(out), "--quiet"],
            cwd=REPO,
            env={**os.environ, "GLOG_minloglevel": "2"},
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - t0
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    report["bulk"] = {
        "command": "agelens batch <folder> --out ages.parquet",
        "images_per_second_job": float(proc.stderr.strip().splitlines()[-1].split("(")[1].split()[0]),
        "images_per_second_wall_with_startup": round(len(blobs) / wall, 1),
        "rows": len(rows),
        "faces": sum(r["face"] is not None for r in rows),
        "summary_line": proc.stderr.strip().splitlines()[-1],
    }
    report["bulk_over_http"] = round(
        report["bulk"]["images_per_second_wall_with_startup"] / report["http"]["max_requests_per_second"], 2
    )
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
