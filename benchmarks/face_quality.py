"""Do the quality flags mean something? Test faces of UTKFace and All-Age-Faces, degraded at
several strengths, through the service's face path and model: the MAE and interval coverage of
usable faces against flagged ones, per reason and per condition.

Conditions (each applied to the whole dataset image):
- `clean`: the image as it is;
- `small_S`: the image shrunk so the face is about S px wide, on a grey 480x480 canvas (a face
  far away in a photo);
- `blur_S`: Gaussian blur of sigma S px;
- `rotate_D`: rotated by D degrees (alignment undoes it; the flags should not fire);
- `dark_F`: every pixel times F (under-exposure); `bright_F`: 255 - (255 - x) * F (over-exposure);
- `turned_D`: the image warped as a flat face turned by D degrees about the vertical axis
  (a stand-in for a real head turn, which no 2-D edit can make).

Every face's measures are kept (`--rows`, parquet), so thresholds can be chosen offline on val
and checked on test. The defaults in `agelens.quality.QualityThresholds` were chosen on val by

    .venv/bin/python benchmarks/face_quality.py --split val --rows /tmp/quality_val.parquet \\
        --out benchmarks/results/face_quality_val.json

and the committed evidence is the test split:

    .venv/bin/python benchmarks/face_quality.py --split test --out benchmarks/results/face_quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import dataset_images  # noqa: E402

from agelens.age_model import AgeModel  # noqa: E402
from agelens.faces import FaceDetector, find_faces  # noqa: E402
from agelens.imaging import read_image_file  # noqa: E402
from agelens.model_store import resolve_model_dir  # noqa: E402
from agelens.quality import QualityThresholds, Reason, quality_reasons  # noqa: E402

Image = NDArray[np.uint8]


def on_canvas(rgb: Image, face_px: int) -> Image:
    """The image shrunk so that it is `face_px` wide (dataset images are mostly face), centred
    on a grey canvas of 480x480."""
    h, w = rgb.shape[:2]
    s = face_px / w
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    canvas = np.full((480, 480, 3), 128, dtype=np.uint8)
    sh, sw = small.shape[:2]
    y, x = (480 - sh) // 2, (480 - sw) // 2
    canvas[y : y + sh, x : x + sw] = small
    return canvas


def rotated(rgb: Image, degrees: float) -> Image:
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(rgb, m, (nw, nh), borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))


def turned(rgb: Image, degrees: float) -> Image:
    """A flat image turned about its vertical axis, seen by a pinhole camera 2.5 widths away."""
    h, w = rgb.shape[:2]
    a = math.radians(degrees)
    f = 2.5 * w
    pts = []
    for x, y in ((0, 0), (w, 0), (w, h), (0, h)):
        x3, z3 = (x - w / 2) * math.cos(a), (x - w / 2) * math.sin(a) + f
        pts.append((w / 2 + f * x3 / z3, h / 2 + f * (y - h / 2) / z3))
    m = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]), np.float32(pts))
    return cv2.warpPerspective(rgb, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))


def darkened(rgb: Image, factor: float) -> Image:
    return (rgb.astype(np.float32) * factor).astype(np.uint8)


def brightened(rgb: Image, factor: float) -> Image:
    return (255 - (255 - rgb.astype(np.float32)) * factor).astype(np.uint8)


def blurred(rgb: Image, sigma: float) -> Image:
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


CONDITIONS: dict[str, Callable[[Image], Image]] = {
    "clean": lambda im: im,
    **{f"small_{s}": partial(on_canvas, face_px=s) for s in (80, 40, 24)},
    **{f"blur_{s}": partial(blurred, sigma=s) for s in (1.5, 3, 5)},
    **{f"rotate_{d}": partial(rotated, degrees=d) for d in (20, 45)},
    **{f"dark_{f}": partial(darkened, factor=f) for f in (0.4, 0.2, 0.1)},
    **{f"bright_{f}": partial(brightened, factor=f) for f in (0.4, 0.2)},
    **{f"turned_{d}": partial(turned, degrees=d) for d in (30, 50, 65)},
}


def collect(
    model: AgeModel,
    detector: FaceDetector,
    faces: dict[str, list[tuple[Path, int]]],
    conditions: dict[str, Callable[[Image], Image]],
) -> list[dict]:
    """One row per (dataset, image, condition) with a face found: its measures and its error."""
    spec = model.manifest.alignment
    rows = []
    for dataset, items in faces.items():
        for path, age in items:
            rgb = read_image_file(path)
            for cond, fn in conditions.items():
                found = find_faces(np.ascontiguousarray(fn(rgb)), spec, detector, max_faces=1)
                if not found.faces:
                    rows.append({"dataset": dataset, "image": path.name, "condition": cond, "found": False})
                    continue
                f = found.faces[0]
                pred = model.get(f.crop[None], 0.9)
                q = f.quality
                rows.append(
                    {
                        "dataset": dataset,
                        "image": path.name,
                        "condition": cond,
                        "found": True,
                        "age": age,
                        "estimate": float(pred.age[0]),
                        "error": abs(float(pred.age[0]) - age),
                        "covered": bool(pred.low[0] <= age <= pred.high[0]),
                        "eye_distance": q.eye_distance,
                        "box_short_side": q.box_short_side,
                        "sharpness": q.sharpness,
                        "roll": q.roll,
                        "yaw": q.yaw,
                        "pitch": q.pitch,
                        "brightness": q.brightness,
                        "contrast": q.contrast,
                        "score": q.score,
                    }
                )
    return rows


def reasons(row: dict, t: QualityThresholds) -> list[str]:
    """The reasons `agelens.quality` gives, from a row's stored measures."""
    keys = ("eye_distance", "sharpness", "yaw", "pitch", "brightness", "contrast", "score")
    return [str(r) for r in quality_reasons(*(row[k] for k in keys), t)]


def group(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    err = np.array([r["error"] for r in rows])
    return {
        "n": len(rows),
        "mae": round(float(err.mean()), 3),
        "coverage90": round(float(np.mean([r["covered"] for r in rows])), 3),
    }


def summarise(rows: list[dict], t: QualityThresholds) -> dict:
    found = [r for r in rows if r["found"]]
    for r in found:
        r["reasons"] = reasons(r, t)
    usable = [r for r in found if not r["reasons"]]
    flagged = [r for r in found if r["reasons"]]
    out: dict = {
        "thresholds": t.model_dump(),
        "images": len({(r["dataset"], r["image"]) for r in rows}),
        "faces_found": len(found),
        "not_found": len(rows) - len(found),
        "degraded": {
            "usable": group([r for r in usable if r["condition"] != "clean"]),
            "flagged": group([r for r in flagged if r["condition"] != "clean"]),
        },
        "all": {"usable": group(usable), "flagged": group(flagged)},
        "by_reason": {},
        "by_condition": {},
        "clean_flagged_share": {},
    }
    u, f = out["all"]["usable"], out["all"]["flagged"]
    out["flagged_over_usable_mae"] = round(f["mae"] / u["mae"], 3) if f["n"] and u["n"] else None
    for reason in Reason:
        out["by_reason"][str(reason)] = group([r for r in flagged if str(reason) in r["reasons"]])
    by_cond: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_cond[r["condition"]].append(r)
    for cond, rs in by_cond.items():
        fr = [r for r in rs if r["found"]]
        out["by_condition"][cond] = {
            "found": len(fr),
            "of": len(rs),
            "usable": group([r for r in fr if not r["reasons"]]),
            "flagged": group([r for r in fr if r["reasons"]]),
            "reasons": dict(
                sorted(
                    {
                        x: sum(x in r["reasons"] for r in fr) for x in {x for r in fr for x in r["reasons"]}
                    }.items()
                )
            ),
        }
    for dataset in sorted({r["dataset"] for r in found}):
        clean = [r for r in found if r["dataset"] == dataset and r["condition"] == "clean"]
        out["clean_flagged_share"][dataset] = round(float(np.mean([bool(r["reasons"]) for r in clean])), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--per-dataset", type=int, default=300, help="images per dataset")
    ap.add_argument("--datasets", default="utkface,aaf")
    ap.add_argument("--model-version", default="latest")
    ap.add_argument("--conditions", help="comma-separated subset of the conditions (default: all)")
    ap.add_argument("--rows", type=Path, help="also write every face's measures here (parquet)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.time()
    model = AgeModel(resolve_model_dir(REPO / "model_store", "agelens-student", args.model_version), "auto")
    model.prepare(warm_up=False)
    detector = FaceDetector(model.manifest.detector)
    faces = {d: dataset_images(d, args.split, args.per_dataset) for d in args.datasets.split(",")}
    conditions = {c: CONDITIONS[c] for c in args.conditions.split(",")} if args.conditions else CONDITIONS
    rows = collect(model, detector, faces, conditions)
    if args.rows:
        pq.write_table(pa.Table.from_pylist(rows), args.rows)
    out = {
        "model": f"{model.manifest.name}/{model.manifest.version} ({model.variant})",
        "split": args.split,
        "conditions": list(conditions),
        **summarise(rows, QualityThresholds()),
        "seconds": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(
        json.dumps({k: out[k] for k in ("all", "degraded", "flagged_over_usable_mae", "clean_flagged_share")})
    )


if __name__ == "__main__":
    main()
