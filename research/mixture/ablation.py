"""What training on the mixture is worth: the same recipe on UTKFace alone against UTKFace and
All-Age-Faces together, 2 seeds each, every network scored on both datasets' val and test as the
export serves it (flip-averaged; temperatures fitted on the mixture's val faces pooled, as export
did before 4.1.0).

    python -m research.mixture.ablation \\
        --arm utkface_only runs/mixture-utk-only/student_seed0 runs/mixture-utk-only/student_seed1 \\
        --arm mixture runs/mixture-4.0.0/student_seed0 runs/mixture-seed1/student_seed1 \\
        --out research/mixture/results/ablation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from torch import nn

from agelens.ages import expected_age, softmax
from research.scoring import flip_logits
from training.classifier import load_classifier
from training.dataset import AGES, CachedData, load_mixture
from training.datasets import load_registry
from training.evaluate import (
    interval_coverage,
    paired_mae_change,
    served_temperatures,
)


def score_run(run: Path, data: CachedData) -> dict:
    return {"run": str(run), **score_model(load_classifier(run / "best.pt"), data)}


def score_model(model: nn.Module, data: CachedData) -> dict:
    """Per dataset, on val and test: MAE of the served age and 90 % interval coverage, and each
    face's estimate (under "per_face")."""
    logits = flip_logits(model, data, ("val", "test"))
    val_true = data.val.ages.numpy()
    t, t_est, _ = served_temperatures(logits["val"], val_true, AGES)
    out: dict = {"temperature": t, "estimate_temperature": t_est, "per_face": {}}
    for part in ("val", "test"):
        p = data.part(part)
        est = expected_age(softmax(logits[part], t_est), AGES)
        probs = softmax(logits[part], t)
        for i, name in enumerate(data.datasets):
            rows = (p.source == i).numpy()
            true = p.ages.numpy()[rows]
            out[f"{name}_{part}_mae"] = round(float(np.abs(est[rows] - true).mean()), 4)
            out[f"{name}_{part}_coverage90"] = round(interval_coverage(probs[rows], true, AGES), 4)
            out["per_face"][f"{name}_{part}"] = est[rows]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", nargs="+", action="append", metavar=("NAME", "RUN"), required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    registry = load_registry()
    data = load_mixture({name: registry[name].cache for name in ("utkface", "aaf")})
    arms: dict[str, list[dict]] = {arm[0]: [score_run(Path(r), data) for r in arm[1:]] for arm in args.arm}
    keys = [f"{d}_{p}_{m}" for d in data.datasets for p in ("val", "test") for m in ("mae", "coverage90")]
    summary: dict = {}
    for name, runs in arms.items():
        summary[name] = {
            k: {
                "mean": round(float(np.mean([r[k] for r in runs])), 4),
                "std": round(float(np.std([r[k] for r in runs])), 4),
            }
            for k in keys
        }
        summary[name]["runs"] = [{k: v for k, v in r.items() if k != "per_face"} for r in runs]
    names = list(arms)
    if len(names) == 2:
        # Face by face: the seed-mean estimate of the second arm against the first's.
        a, b = names
        paired = {}
        for d in data.datasets:
            for part in ("val", "test"):
                key = f"{d}_{part}"
                p = data.part(part)
                true = p.ages.numpy()[(p.source == data.datasets.index(d)).numpy()]
                new = np.mean([r["per_face"][key] for r in arms[b]], axis=0)
                old = np.mean([r["per_face"][key] for r in arms[a]], axis=0)
                paired[key] = paired_mae_change(new, old, true)
        summary[f"{b}_minus_{a}"] = paired
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items()}, indent=1)[:4000])


if __name__ == "__main__":
    main()
