"""CPU cost of one request: the previous JPEG decode (BGR, then a BGR -> RGB pass) with OpenCV's
default thread pool, against the decode straight to RGB, with the default pool and with one thread.

OpenCV runs a full-image colour conversion on its pool (one thread per core), and the pool's
threads spin after each job: CPU time a second worker process needs. Each configuration runs in
its own process (the pool is per process): the service's Estimator on a one-face 640x480 JPEG,
requests paced with a gap between them as under an open-loop load, CPU time (process_time, all
threads) and wall time per request. The rounds alternate the configurations, so a slow period of
this shared machine hits all of them.

    .venv/bin/python benchmarks/opencv_threads.py > benchmarks/results/opencv_threads.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROUNDS, REQUESTS, GAP_S = 3, 300, 0.004


CONFIGS = {
    "previous: BGR decode + cvtColor, OpenCV default pool": ("bgr", 0),
    "RGB decode, OpenCV default pool": ("rgb", 0),
    "RGB decode, one OpenCV thread (shipped)": ("rgb", 1),
}


def _previous_fast_path(data: bytes, img):  # type: ignore[no-untyped-def]
    """agelens.imaging._jpeg_fast_path as it was before decoding straight to RGB."""
    import cv2
    import numpy as np

    from agelens import imaging

    if img.format != "JPEG" or img.mode not in ("RGB", "L") or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return imaging.apply_orientation(rgb, int(img.getexif().get(imaging.EXIF_ORIENTATION, 1)))


def child(name: str) -> dict:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import photo

    from agelens import imaging
    from service.app import load_estimator
    from service.settings import Settings

    decode, threads = CONFIGS[name]
    if decode == "bgr":
        imaging._jpeg_fast_path = _previous_fast_path  # type: ignore[assignment]
    est = load_estimator(Settings(opencv_threads=threads))
    import cv2

    data = photo()
    for _ in range(30):
        est.estimate(data)
    cpu0, busy = time.process_time(), 0.0
    for _ in range(REQUESTS):
        t = time.perf_counter()
        est.estimate(data)
        busy += time.perf_counter() - t
        time.sleep(GAP_S)
    return {
        "config": name,
        "opencv_threads": cv2.getNumThreads(),
        "cpu_ms_per_request": round((time.process_time() - cpu0) / REQUESTS * 1e3, 3),
        "wall_ms_per_request": round(busy / REQUESTS * 1e3, 3),
    }


def main() -> None:
    runs: list[dict] = []
    env = {**os.environ, "GLOG_minloglevel": "2"}
    for r in range(ROUNDS):
        for name in CONFIGS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", name],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append({"round": r, **json.loads(out.stdout.strip().splitlines()[-1])})
    summary = {}
    for name in CONFIGS:
        rows = [x for x in runs if x["config"] == name]
        summary[name] = {
            k: round(statistics.median(x[k] for x in rows), 3)
            for k in ("cpu_ms_per_request", "wall_ms_per_request")
        }
    print(
        json.dumps(
            {
                "what": "Estimator.estimate on a one-face 640x480 JPEG, detector auto, requests "
                f"{GAP_S * 1e3:.0f} ms apart",
                "cpu_count": os.cpu_count(),
                "rounds": ROUNDS,
                "requests_per_run": REQUESTS,
                "median": summary,
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
    else:
        main()
