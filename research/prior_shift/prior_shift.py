"""How much of a registered model's error is the pull toward the training set's common ages.

Age classifiers learn p(age | face) under the training set's age prior, which UTKFace crowds at
20-35: estimates of the oldest faces are pulled down, of teenagers up. Dividing that prior out
with a strength gamma, logits - gamma * log p_train(age), is the standard label-shift correction;
it costs nothing at inference (a bias on the last layer). This measures it on val and test for
several gamma, overall and per age band, with the mean signed error per band, so the trade-off
between the middle ages and the extremes is on record (research/notebook.md).

    python -m research.prior_shift.prior_shift --model-dir runs/history/agelens-student/3.1.0 \\
        > research/prior_shift/results/prior_shift_3.1.0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agelens.ages import softmax
from training.dataset import NUM_CLASSES, load_data
from training.evaluate import compute_metrics
from training.evaluate_onnx import model_logits


def training_prior(train_ages: NDArray[np.integer], sigma: float = 2.0) -> NDArray[np.float64]:
    """The training set's age distribution, add-one and Gaussian smoothed (labels are estimates
    themselves, and an empty age must not get an infinite correction)."""
    counts = np.bincount(train_ages, minlength=NUM_CLASSES).astype(np.float64) + 1.0
    offsets = np.arange(-4 * int(sigma), 4 * int(sigma) + 1)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    smooth = np.convolve(counts, kernel / kernel.sum(), mode="same")
    return smooth / smooth.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("data/cache/utkface-64"))
    ap.add_argument("--gammas", default="0,0.1,0.2,0.3,0.4,0.5,0.7,1.0")
    args = ap.parse_args()
    data = load_data(args.cache)
    manifest, logits = model_logits(args.model_dir, data, ("val", "test"))
    ages = np.asarray(manifest.ages, dtype=np.float64)
    log_prior = np.log(training_prior(data.train.ages.numpy()))
    rows = []
    for gamma in (float(g) for g in args.gammas.split(",")):
        row: dict = {"gamma": gamma}
        for part, raw in logits.items():
            m = compute_metrics(softmax(raw - gamma * log_prior), data.part(part).ages.numpy(), ages, part)
            row[part] = {
                "mae": m.mae,
                "band_balanced_mae": round(float(np.mean([b.mae for b in m.bands])), 4),
                "bands": {b.name: {"mae": b.mae, "bias": b.bias} for b in m.bands},
            }
        rows.append(row)
    print(json.dumps({"model": f"{manifest.name}/{manifest.version}", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
