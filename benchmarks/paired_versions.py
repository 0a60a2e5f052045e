"""Two model-store versions on the same faces: each dataset's MAE, and the face-by-face change
from the old to the new with its standard error (training.evaluate.paired_mae_change). Each file
is fed as the service feeds it (agelens.age_model.AgeModel), on the registry's cached crops.

    .venv/bin/python benchmarks/paired_versions.py --old 4.0.0:int8 --new 4.1.0:int8 --split test \\
        --out benchmarks/results/mixture/paired_4.0.0_4.1.0_int8_test.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agelens.age_model import AgeModel  # noqa: E402
from training.dataset import load_data  # noqa: E402
from training.datasets import load_registry  # noqa: E402
from training.evaluate import paired_mae_change  # noqa: E402


def ages(spec: str, crops: np.ndarray) -> np.ndarray:
    version, variant = spec.split(":")
    model = AgeModel(REPO / "model_store" / "agelens-student" / version, variant)  # type: ignore[arg-type]
    model.prepare(warm_up=False)
    return np.asarray(model.get(crops, 0.9).age, dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="version:variant")
    ap.add_argument("--new", required=True, help="version:variant")
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--datasets", default="utkface,aaf")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    registry = load_registry()
    out: dict = {"old": args.old, "new": args.new, "split": args.split, "datasets": {}}
    maes = {"old": [], "new": []}
    for name in args.datasets.split(","):
        part = load_data(registry[name].cache).part(args.split)
        crops = part.crops.numpy()
        true = part.ages.numpy().astype(np.float64)
        old, new = ages(args.old, crops), ages(args.new, crops)
        entry = {
            "n": len(true),
            "old_mae": round(float(np.abs(old - true).mean()), 4),
            "new_mae": round(float(np.abs(new - true).mean()), 4),
            **paired_mae_change(new, old, true),
        }
        d = np.abs(new - true) - np.abs(old - true)
        entry["std_of_face_differences"] = round(float(d.std(ddof=1)), 4)
        out["datasets"][name] = entry
        maes["old"].append(entry["old_mae"])
        maes["new"].append(entry["new_mae"])
    out["mean_of_dataset_maes"] = {k: round(float(np.mean(v)), 4) for k, v in maes.items()}
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
