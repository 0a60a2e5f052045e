"""Accuracy through the whole service pipeline, on test faces shown as users send them.

The model card's figures are measured on cached crops. Users send photos: the face is smaller or
larger, on a background, re-encoded, sometimes greyscale or heavily compressed. This benchmark
sends each dataset's *test* images (UTKFace's 200x200 chips, All-Age-Faces' 309 px crops) through
the real estimator (decode, BlazeFace, alignment, ONNX model) in these conditions and reports each
model's MAE against the labels, and how far each face's estimate moves from the original image
(the same face should get the same age):

- `original`: the dataset image as it is (what training saw);
- `photo_220` / `photo_110`: the image scaled so it is 220 / 110 px wide on a grey 640x480
  canvas, JPEG quality 90 (a face in a portrait / in a group photo);
- `grey`: the image in greyscale (scans, old prints);
- `jpeg_30`: re-encoded at JPEG quality 30 (messaging apps, thumbnails);
- `grey_jpeg_30`: both.

    .venv/bin/python benchmarks/photo_robustness.py --faces 1000 --models 4.0.0:int8,4.1.0:int8 \\
        > benchmarks/results/photo_robustness.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import dataset_images  # noqa: E402

from service.estimator import load_estimator  # noqa: E402
from service.settings import Settings  # noqa: E402


def encode(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def as_photo(img: Image.Image, width: int) -> bytes:
    canvas = Image.new("RGB", (640, 480), (200, 200, 200))
    face = img.convert("RGB").resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    canvas.paste(face, ((640 - face.width) // 2, max(0, (480 - face.height) // 2)))
    return encode(canvas)


CONDITIONS: dict[str, Callable[[Path], bytes]] = {
    "original": lambda p: p.read_bytes(),
    "photo_220": lambda p: as_photo(Image.open(p), 220),
    "photo_110": lambda p: as_photo(Image.open(p), 110),
    "grey": lambda p: encode(Image.open(p).convert("L"), 95),
    "jpeg_30": lambda p: encode(Image.open(p), 30),
    "grey_jpeg_30": lambda p: encode(Image.open(p).convert("L"), 30),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=1000, help="test images per dataset")
    ap.add_argument("--datasets", default="utkface,aaf")
    ap.add_argument("--models", default="4.1.0:int8", help="version:variant,...")
    args = ap.parse_args()
    out: dict = {
        "faces_per_dataset": args.faces,
        "split": "test",
        "conditions": list(CONDITIONS),
        "datasets": {},
    }
    estimators = {}
    for spec in args.models.split(","):
        version, variant = spec.split(":")
        estimators[f"{version} {variant}"] = load_estimator(
            Settings(model_version=version, model_variant=variant, max_faces=1)
        )
    for dataset in args.datasets.split(","):
        faces = dataset_images(dataset, "test", args.faces)
        inputs = {cond: [fn(p) for p, _ in faces] for cond, fn in CONDITIONS.items()}
        truth = np.array([a for _, a in faces], dtype=np.float64)
        out["datasets"][dataset] = {"faces": len(faces), "models": {}}
        for name, est in estimators.items():
            ages: dict[str, np.ndarray] = {}
            for cond, blobs in inputs.items():
                # One face per input; a face the detector misses counts as missing, not as an error.
                ages[cond] = np.array(
                    [(r.faces[0].age if r.faces else np.nan) for r in (est.estimate(b, False) for b in blobs)]
                )
            found = np.all([~np.isnan(a) for a in ages.values()], axis=0)
            rep: dict = {"found_in_every_condition": int(found.sum())}
            for cond, a in ages.items():
                err = a[found] - truth[found]
                rep[cond] = {
                    "mae": round(float(np.abs(err).mean()), 3),
                    "cs5": round(float((np.abs(err) <= 5).mean()), 3),
                    "mean_signed": round(float(err.mean()), 3),
                }
                if cond != "original":
                    moved = a[found] - ages["original"][found]
                    rep[cond]["moved_mean_abs"] = round(float(np.abs(moved).mean()), 3)
                    rep[cond]["moved_mean_signed"] = round(float(moved.mean()), 3)
            out["datasets"][dataset]["models"][name] = rep
            print(dataset, name, json.dumps(rep), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
