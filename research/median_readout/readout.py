"""Which statistic of a registered model's distribution should be its age estimate.

The service answers the mean of the distribution at the manifest's `estimate_temperature`
(chosen on val between the raw and the calibrated softmax). The mean minimises squared error;
the error reported and targeted is absolute, which the median minimises, and the median is
also less pulled by the wide tails of an over-smoothed distribution. This measures mean,
median (the 0.5 quantile, interpolated inside its one-year class) and mode (argmax) at several
temperatures on val and test, so the choice is on record (research/notebook.md).

    python -m research.median_readout.readout --model-dir runs/history/agelens-student/3.2.0 \\
        > research/median_readout/results/readout_3.2.0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agelens.ages import expected_age, softmax
from training.dataset import load_data
from training.evaluate import paired_mae_change
from training.evaluate_onnx import model_logits


def median_age(probs: NDArray[np.floating], ages: NDArray[np.floating]) -> NDArray[np.float64]:
    """The 0.5 quantile, with class a read as the interval [a - 0.5, a + 0.5] filled uniformly,
    so the estimate moves continuously with the distribution instead of in whole years."""
    p = np.asarray(probs, dtype=np.float64)
    cdf = np.cumsum(p, axis=-1)
    rows = np.arange(len(p))
    idx = np.argmax(cdf >= 0.5, axis=-1)
    below = np.where(idx > 0, cdf[rows, np.maximum(idx - 1, 0)], 0.0)
    return np.asarray(ages, dtype=np.float64)[idx] - 0.5 + (0.5 - below) / np.maximum(p[rows, idx], 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("data/cache/utkface-64"))
    args = ap.parse_args()
    data = load_data(args.cache)
    manifest, logits = model_logits(args.model_dir, data, ("val", "test"))
    ages = np.asarray(manifest.ages, dtype=np.float64)
    temps = sorted({1.0, 0.85, manifest.temperature, manifest.estimate_temperature, 0.6, 0.5}, reverse=True)
    rows = []
    estimates: dict[tuple[str, float, str], NDArray[np.float64]] = {}
    val_mae: dict[tuple[float, str], float] = {}
    for t in temps:
        row: dict = {"temperature": round(t, 4)}
        for part, raw in logits.items():
            p = softmax(raw, t)
            true = data.part(part).ages.numpy().astype(np.float64)
            row[part] = {}
            for name, pred in (
                ("mean", expected_age(p, ages)),
                ("median", median_age(p, ages)),
                ("mode", ages[p.argmax(axis=-1)]),
            ):
                estimates[part, t, name] = pred
                err = float(np.abs(pred - true).mean())
                if part == "val":
                    val_mae[t, name] = err
                row[part][name] = round(err, 4)
        rows.append(row)
    served = (manifest.estimate_temperature, "mean")
    best = min(val_mae, key=val_mae.__getitem__)
    # The best readout on val against the served one, face by face.
    paired = {
        part: paired_mae_change(
            estimates[part, *best], estimates[part, *served], data.part(part).ages.numpy()
        )
        for part in logits
    }
    out = {
        "model": f"{manifest.name}/{manifest.version}",
        "served": {"temperature": round(served[0], 4), "statistic": served[1]},
        "best_on_val": {"temperature": round(best[0], 4), "statistic": best[1], **paired},
        "mae": rows,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
