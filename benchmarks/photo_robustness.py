"""Accuracy through the whole service pipeline, on test faces shown as in photos.

The model card's figures are measured on cached crops of UTKFace's 200x200 chips. Users send
photos: the face is smaller or larger, sits on a background, and is JPEG-encoded again. This
benchmark sends UTKFace *test* faces through the real estimator (decode, BlazeFace, alignment,
ONNX model) in three conditions and reports each model's MAE against the labels, and how far
each face's estimate moves between conditions (the same face should get the same age):

- `chip`: the 200x200 chip as it is (what training saw);
- `photo_220`: the chip resized to 220 px on a 640x480 grey canvas, JPEG quality 90;
- `photo_110`: the same at 110 px (a face in a group photo).

    .venv/bin/python benchmarks/photo_robustness.py --faces 4603 \
        > benchmarks/results/photo_robustness.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.app import load_estimator  # noqa: E402
from service.settings import Settings  # noqa: E402
from training.data import read_split  # noqa: E402

DATASET = REPO.parent / "shared" / "datasets" / "utkface"
CONDITIONS = {"photo_220": 220, "photo_110": 110}


def test_faces(n: int, seed: int = 0) -> list[tuple[Path, int]]:
    rows = [r for r in read_split(REPO / "training/splits/utkface.csv") if r.split == "test"]
    picks = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return [(DATASET / rows[i].filename, rows[i].age) for i in sorted(picks)]


def as_photo(chip: Path, size: int) -> bytes:
    canvas = Image.new("RGB", (640, 480), (200, 200, 200))
    face = Image.open(chip).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    canvas.paste(face, ((640 - size) // 2, (480 - size) // 2))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=int, default=1000)
    ap.add_argument(
        "--models", default="3.2.0:fp32,3.2.0:int8,3.3.0:fp32,3.3.0:int8", help="version:variant,..."
    )
    args = ap.parse_args()
    faces = test_faces(args.faces)
    inputs = {
        "chip": [p.read_bytes() for p, _ in faces],
        **{name: [as_photo(p, size) for p, _ in faces] for name, size in CONDITIONS.items()},
    }
    truth = np.array([a for _, a in faces], dtype=np.float64).clip(0, 100)
    out: dict = {"faces": len(faces), "split": "test", "conditions": list(inputs), "models": {}}
    for spec in args.models.split(","):
        version, variant = spec.split(":")
        est = load_estimator(Settings(model_version=version, model_variant=variant, max_faces=1))
        ages: dict[str, np.ndarray] = {}
        for cond, blobs in inputs.items():
            # One face per input; a face the detector misses counts as missing, not as an error.
            ages[cond] = np.array(
                [(r.faces[0].age if r.faces else np.nan) for r in (est.estimate(b, False) for b in blobs)]
            )
        found = np.all([~np.isnan(a) for a in ages.values()], axis=0)
        rep: dict = {"found_in_every_condition": int(found.sum())}
        for cond, a in ages.items():
            err = np.abs(a[found] - truth[found])
            rep[cond] = {"mae": round(float(err.mean()), 3), "cs5": round(float((err <= 5).mean()), 3)}
        for cond in CONDITIONS:
            moved = np.abs(ages[cond][found] - ages["chip"][found])
            rep[f"{cond}_vs_chip"] = {
                "mean_abs_years": round(float(moved.mean()), 3),
                "p90_abs_years": round(float(np.percentile(moved, 90)), 3),
                "mean_signed_years": round(float((ages[cond][found] - ages["chip"][found]).mean()), 3),
            }
        out["models"][f"{version} {variant}"] = rep
        print(spec, json.dumps(rep), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
