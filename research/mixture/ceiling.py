"""How low can this network go on All-Age-Faces at all? Networks of the shipped architecture
fine-tuned on All-Age-Faces alone (specialists, no UTKFace to keep) bound what a mixture model of
the same size can reach there. Every network is scored on All-Age-Faces only, as the export
serves it (crop and mirror; temperatures fitted on All-Age-Faces val, so the specialists get
their best calibration), with MAE, CS@5, age bands with signed error, and gender with signed
error overall and within each band (is the women's offset their age mix, or their faces?).

    python -m research.mixture.ceiling \\
        --run shipped_4.0.0 runs/mixture-4.0.0-final/student_interpolated \\
        --run aaf_only_clean_40ep runs/aaf-specialist/dk_teacher … \\
        --out research/mixture/results/ceiling.json

A specialist is the dark-knowledge teacher stage run on All-Age-Faces alone, e.g. (the 40-epoch
one; the others: 15 epochs, with and without mixup 0.5 and photo conditions 0.3):

    agelens train --config training/configs/mixture_4.0.0.toml --stages dk_teacher \\
        --set run_dir=runs/aaf-specialist --set 'data.datasets={aaf = 1.0}' \\
        --set dk_teacher.epochs=40 --set dk_teacher.mixup=0.0 --set dk_teacher.photo=0.0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agelens.ages import expected_age, softmax
from research.scoring import flip_logits
from training.classifier import load_classifier
from training.dataset import AGES, CachedData, load_mixture
from training.datasets import load_registry
from training.evaluate import GENDERS, band_keys, paired_mae_change, served_temperatures


def signed(pred: NDArray[np.floating], true: NDArray[np.floating], rows: NDArray[np.bool_]) -> dict:
    err = pred[rows] - true[rows]
    return {
        "n": int(rows.sum()),
        "mae": round(float(np.abs(err).mean()), 3),
        "bias": round(float(err.mean()), 3),
    }


def breakdown(pred: NDArray[np.floating], true: NDArray[np.floating], genders: list[str]) -> dict:
    bands = np.asarray(band_keys(true))
    sex = np.asarray(genders)
    out: dict = {
        "mae": round(float(np.abs(pred - true).mean()), 4),
        "cs5": round(float((np.abs(pred - true) <= 5).mean()), 4),
        "bands": {b: signed(pred, true, bands == b) for b in dict.fromkeys(bands)},
        "gender": {g: signed(pred, true, sex == g) for g in sorted(set(genders))},
    }
    out["gender_within_band"] = {
        b: {g: signed(pred, true, (bands == b) & (sex == g)) for g in sorted(set(genders))}
        for b in out["bands"]
    }
    return out


def score(run: Path, data: CachedData) -> tuple[dict, dict[str, NDArray[np.floating]]]:
    logits = flip_logits(load_classifier(run / "best.pt"), data, ("val", "test"))
    t_est = served_temperatures(logits["val"], data.val.ages.numpy(), AGES).estimate
    estimates = {part: expected_age(softmax(lg, t_est), AGES) for part, lg in logits.items()}
    report: dict = {"run": str(run), "estimate_temperature": t_est}
    for part, est in estimates.items():
        p = data.part(part)
        genders = [GENDERS.get(r.gender, "unknown") for r in p.records]
        report[part] = breakdown(est, p.ages.numpy(), genders)
    return report, estimates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs=2, action="append", metavar=("NAME", "RUN"), required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    data = load_mixture({"aaf": load_registry()["aaf"].cache})
    runs = {name: score(Path(run), data) for name, run in args.run}
    summary: dict = {name: report for name, (report, _) in runs.items()}
    first, *others = runs
    for name in others:
        summary[f"{name}_minus_{first}"] = {
            part: paired_mae_change(runs[name][1][part], runs[first][1][part], data.part(part).ages.numpy())
            for part in ("val", "test")
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    for name, (report, _) in runs.items():
        t = report["test"]
        bands = ", ".join(f"{b} {v['mae']:.2f} ({v['bias']:+.2f})" for b, v in t["bands"].items())
        genders = ", ".join(f"{g} {v['mae']:.2f} ({v['bias']:+.2f})" for g, v in t["gender"].items())
        print(f"{name}: val {report['val']['mae']:.3f} test {t['mae']:.3f} | {bands} | {genders}")


if __name__ == "__main__":
    main()
