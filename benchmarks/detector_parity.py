"""Do the two detector backends give the same answers? Every test-split face through the service's
Estimator twice: BlazeFace on LiteRT (the default) and through MediaPipe's graph (the reference).

Reports faces found, the largest keypoint and age differences between the backends, the test MAE
of each, and the detection time of each, so the switch of backend is shown to change speed only.

    .venv/bin/python benchmarks/detector_parity.py > benchmarks/results/detector_parity.json
"""

from __future__ import annotations

import argparse
import csv
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

from service.app import load_estimator  # noqa: E402
from service.settings import Settings  # noqa: E402

DATASET = Path(os.environ.get("AGELENS_UTKFACE", REPO.parent / "shared" / "datasets" / "utkface"))


def spread(values: list[float]) -> dict[str, float]:
    return {"max": round(max(values), 6), "mean": round(statistics.fmean(values), 6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="first N test faces (0 = all)")
    args = ap.parse_args()
    with open(REPO / "training/splits/utkface.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    if args.limit:
        rows = rows[: args.limit]
    estimators = {b: load_estimator(Settings(detector_backend=b)) for b in ("litert", "mediapipe")}
    kp_diff: list[float] = []
    age_diff: list[float] = []
    errors: dict[str, list[float]] = {b: [] for b in estimators}
    detect_ms: dict[str, list[float]] = {b: [] for b in estimators}
    mismatched = 0
    for row in rows:
        data = (DATASET / row["filename"]).read_bytes()
        out = {}
        for backend, est in estimators.items():
            # One detection per image and backend: the aligned faces (for keypoints) and the
            # response built from them, as Estimator.estimate does.
            prepared = est._prepare(data)
            result = est._responses([prepared], False, time.perf_counter())[0]
            out[backend] = (prepared, result)
            detect_ms[backend].append(result.timings.detect_ms)
        (pa, ra), (pb, rb) = out["litert"], out["mediapipe"]
        if len(ra.faces) != len(rb.faces):
            mismatched += 1
            continue
        for fa, fb in zip(pa.faces, pb.faces, strict=True):
            kp_diff.append(float(np.abs(fa.face.keypoints - fb.face.keypoints).max()))
        for fa, fb in zip(ra.faces, rb.faces, strict=True):
            age_diff.append(abs(fa.age - fb.age))
        for backend, (_, r) in out.items():
            if r.faces:
                main_face = max(r.faces, key=lambda f: f.box.width * f.box.height)
                errors[backend].append(abs(main_face.age - int(row["age"])))
    for est in estimators.values():
        est.close()
    print(
        json.dumps(
            {
                "images": len(rows),
                "images_with_different_face_counts": mismatched,
                "faces_compared": len(kp_diff),
                "keypoint_abs_diff_px": spread(kp_diff),
                "age_abs_diff_years": spread(age_diff),
                "test_mae_main_face": {b: round(statistics.fmean(e), 4) for b, e in errors.items()},
                "faces_found": {b: len(e) for b, e in errors.items()},
                "detect_ms_median": {b: round(statistics.median(v), 2) for b, v in detect_ms.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
