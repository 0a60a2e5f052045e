"""Evaluate every network of a finished run again, on a given crop cache.

A run trained elsewhere (on a GPU machine, from the WebP-packed cache of `training/cache_pack.py`)
reports its figures on the crops it was given. The figures that are published come from the
original cache instead, through this module: each classifier's best.pt on val and test, one pass
and flip-averaged (as exported), the ablation arms and the born-again runs as mean and std over
seeds, and the ordinal teacher's order accuracy and linear probe.

    python -m research.earlier_runs.reevaluate --config training/configs/utkface_gpu.toml \\
        --out training/results/gpu_run_3.0.0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from agelens.ages import expected_age, softmax
from research.scoring import flip_logits, metrics_entry
from training.classifier import load_classifier
from training.config import PipelineConfig
from training.dataset import AGES, NORM, CachedData, load_data
from training.evaluate import (
    fit_temperature,
    mean_std,
    paired_mae_change,
    predict_logits,
)
from training.ordinal import load_ordinal_teacher
from training.pipeline import ARMS, born_again_runs, ordinal_report


def classifier_report(
    path: Path,
    data: CachedData,
    probs_out: dict[str, list] | None = None,
    estimates_out: dict[str, NDArray[np.float64]] | None = None,
) -> dict:
    """One network's figures; its flip-averaged probabilities are appended to `probs_out`, its
    `*_flip_calibrated` age estimates per face written to `estimates_out`.

    `*_flip_calibrated`: the age as the export stage would give it if it chose the calibrated
    distribution (temperature fitted on val for the 90 % interval, `estimate_temperature`)."""
    model = load_classifier(path)
    out: dict = {}
    for part in ("val", "test"):
        out[f"{part}_one_pass"] = metrics_entry(
            softmax(predict_logits(model, data.part(part).crops, NORM)), data, part
        )
    flip = flip_logits(model, data)
    for part, logits in flip.items():
        probs = softmax(logits)
        out[f"{part}_flip"] = metrics_entry(probs, data, part)
        if probs_out is not None:
            probs_out[part].append(probs)
    t = fit_temperature(flip["val"], data.val.ages.numpy(), AGES)
    out["flip_calibration_temperature"] = round(t, 4)
    for part, logits in flip.items():
        calibrated = softmax(logits, t)
        out[f"{part}_flip_calibrated"] = metrics_entry(calibrated, data, part)
        if estimates_out is not None:
            estimates_out[part] = expected_age(calibrated, AGES)
    return out


def warm_start_report(
    path: Path, data: CachedData, probs_out: dict[str, list], start: dict[str, NDArray[np.float64]]
) -> dict:
    """`classifier_report`, plus, for a run that started from another network's weights (`start`
    holds that network's estimates; empty otherwise), its change against that start face by
    face: the question a continuation answers is whether it ends below where it began."""
    estimates: dict[str, NDArray[np.float64]] = {}
    out = classifier_report(path, data, probs_out, estimates)
    if start:
        out["flip_calibrated_vs_init_from"] = {
            part: paired_mae_change(estimates[part], start[part], data.part(part).ages.numpy())
            for part in ("val", "test")
        }
    return out


def mean_std_entry(values: list[float]) -> dict[str, float]:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std}


def arm_summary(runs: dict[str, dict]) -> dict:
    out: dict = {}
    for key in (
        "val_one_pass",
        "test_one_pass",
        "val_flip",
        "test_flip",
        "val_flip_calibrated",
        "test_flip_calibrated",
    ):
        out[key] = {
            "mae": mean_std_entry([r[key]["mae"] for r in runs.values()]),
            "cs5": mean_std_entry([r[key]["cs5"] for r in runs.values()]),
            "bands_mae_mean": {
                band: round(float(np.mean([r[key]["bands"][band] for r in runs.values()])), 4)
                for band in next(iter(runs.values()))[key]["bands"]
            },
        }
    return out


def reevaluate(cfg: PipelineConfig, cache: Path) -> dict:
    data = load_data(cache)
    rd = cfg.run_dir
    report: dict = {"cache": str(cache), "run_dir": str(rd), "runs": {}, "arms": {}}
    probs: dict[str, list] = {"val": [], "test": []}
    for name in ("dk_teacher", "student"):
        if (rd / name / "best.pt").exists():
            report["runs"][name] = classifier_report(rd / name / "best.pt", data, probs)
    start: dict[str, NDArray[np.float64]] = {}
    if cfg.student.init_from is not None:
        # The network the runs started from, measured the same way: the baseline of a warm start.
        report["init_from"] = {
            "path": str(cfg.student.init_from),
            **classifier_report(cfg.student.init_from, data, estimates_out=start),
        }
    for arm in ARMS:
        runs = {}
        for seed in cfg.ablation.seeds:
            path = rd / "ablation" / f"{arm}_seed{seed}" / "best.pt"
            if path.exists():
                runs[f"{arm}_seed{seed}"] = warm_start_report(path, data, probs, start)
        if runs:
            report["runs"].update(runs)
            report["arms"][arm] = {"seeds": len(runs), **arm_summary(runs)}
    if cfg.born_again.enabled:
        # The born-again runs (one per seed) are summarised like an arm, under their name.
        runs = {
            name: warm_start_report(rd / name / "best.pt", data, probs, start)
            for name, _ in born_again_runs(cfg)
            if (rd / name / "best.pt").exists()
        }
        if runs:
            report["runs"].update(runs)
            report["arms"][cfg.born_again.name] = {"seeds": len(runs), **arm_summary(runs)}
        # Their dark-knowledge teacher: the mean of its members' flip-averaged distributions
        # (the service's view of an ensemble), at temperature 1.
        members = [
            flip_logits(load_classifier(cfg.teachers_root / name / "best.pt"), data)
            for name in cfg.born_again.teachers
        ]
        report["born_again_teachers_ensemble_flip"] = {
            "members": list(cfg.born_again.teachers),
            **{
                part: metrics_entry(np.mean([softmax(m[part]) for m in members], axis=0), data, part)
                for part in ("val", "test")
            },
        }
    if len(probs["val"]) > 1:
        # The mean of every network's flip-averaged distribution: what the same architecture
        # reaches when many runs vote, i.e. a ceiling for teachers built from it.
        report["ensemble_of_all_runs_flip"] = {
            "members": len(probs["val"]),
            **{part: metrics_entry(np.mean(probs[part], axis=0), data, part) for part in ("val", "test")},
        }
    if (rd / "ordinal_teacher" / "best.pt").exists():
        report["ordinal_teacher"] = ordinal_report(
            load_ordinal_teacher(rd / "ordinal_teacher" / "best.pt"), data, cfg.ordinal
        )
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="crop cache to evaluate on (default: the config's)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PipelineConfig.load(args.config)
    report = reevaluate(cfg, args.cache or cfg.data.cache)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for arm, s in report["arms"].items():
        print(
            f"{arm:16s} val {s['val_one_pass']['mae']['mean']:.3f}±{s['val_one_pass']['mae']['std']:.3f} "
            f"test {s['test_one_pass']['mae']['mean']:.3f}±{s['test_one_pass']['mae']['std']:.3f} | flip: "
            f"val {s['val_flip']['mae']['mean']:.3f} test {s['test_flip']['mae']['mean']:.3f} | calibrated: "
            f"val {s['val_flip_calibrated']['mae']['mean']:.3f} "
            f"test {s['test_flip_calibrated']['mae']['mean']:.3f}"
        )


if __name__ == "__main__":
    main()
