"""Model-only latency per face with onnxruntime on CPU (batch 1 and 8, one thread).

.venv/bin/python benchmarks/model_latency.py > benchmarks/results/model_latency.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agelens.manifest import ModelManifest  # noqa: E402
from agelens.model_store import available_versions  # noqa: E402


def bench(path: Path, batch: int, threads: int, size: int, repeats: int = 300) -> dict[str, float]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    for _ in range(30):
        sess.run(None, {"input": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {
        "batch": batch,
        "threads": threads,
        "median_ms_per_call": round(statistics.median(times), 4),
        "median_ms_per_face": round(statistics.median(times) / batch, 4),
        "p90_ms_per_face": round(times[int(0.9 * len(times))] / batch, 4),
    }


def main() -> None:
    store = REPO / "model_store"
    name = "agelens-student"
    out = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "onnxruntime": ort.__version__,
        },
        "models": [],
    }
    for version in available_versions(store, name):
        d = store / name / version
        m = ModelManifest.load(d / "manifest.json")
        files = [("fp32", d / m.file)]
        if m.int8 is not None:
            files.append(("int8", d / m.int8.file))
        for variant, path in files:
            rows = [bench(path, b, 1, m.alignment.crop_size) for b in (1, 8)]
            out["models"].append(
                {
                    "version": version,
                    "variant": variant,
                    "bytes": path.stat().st_size,
                    "parameters": m.parameters,
                    "results": rows,
                }
            )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
