"""In-process latency of one request, split by stage, for a one-face 640x480 JPEG.

The face is a UTKFace test-split photo pasted on a 640x480 background (so needs the dataset).
Stages: decode, detect, align, quality (the per-face quality measures), infer (all from the
Estimator's own timings) and serialise (pydantic -> JSON bytes, as FastAPI does).

    .venv/bin/python benchmarks/e2e_latency.py > benchmarks/results/e2e_latency.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_minloglevel", "2")

sys.path.insert(0, str(REPO / "benchmarks"))
from common import photo  # noqa: E402

from service.app import load_estimator  # noqa: E402
from service.settings import Settings  # noqa: E402

# Both detector backends with both useful model choices ("full" alone misses this close-up face),
# and both model files on the default backend, so the cost of each is on record side by side.
CONFIGS = [
    *(
        {"detector_backend": "litert", "detector_model": m, "model_variant": v}
        for v in ("fp32", "int8")
        for m in ("auto", "short")
    ),
    *({"detector_backend": "mediapipe", "detector_model": m} for m in ("auto", "short")),
]


def measure(settings: Settings, n: int) -> dict:
    est = load_estimator(settings)
    data = photo()
    for _ in range(20):
        est.estimate(data)
    stages = ("decode", "detect", "align", "quality", "infer", "serialise", "total")
    rows: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(n):
        t0 = time.perf_counter()
        r = est.estimate(data, include_distribution=True)
        t1 = time.perf_counter()
        r.model_dump_json(exclude_none=True).encode()
        t2 = time.perf_counter()
        for k in ("decode", "detect", "align", "quality", "infer"):
            rows[k].append(getattr(r.timings, f"{k}_ms"))
        rows["serialise"].append((t2 - t1) * 1e3)
        rows["total"].append((t2 - t0) * 1e3)
    assert len(r.faces) == 1
    est.close()
    return {
        "model": f"{r.model.name} {r.model.version}",
        "detector_backend": est.detector_spec.backend,
        "detector": est.detector_spec.model,
        "model_variant": est.model.variant,
        "ort_threads": settings.ort_threads,
        "age": r.faces[0].age,
        "median_ms": {k: round(statistics.median(v), 3) for k, v in rows.items()},
        "p90_ms": {k: round(float(np.percentile(v, 90)), 3) for k, v in rows.items()},
    }


def main(n: int = 200) -> None:
    runs = [measure(Settings(**cfg), n) for cfg in CONFIGS]
    print(json.dumps({"image": "640x480 JPEG, one face", "requests": n, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
