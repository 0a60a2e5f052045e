"""Weights between a warm start and its fine-tunes (WiSE-FT: Wortsman et al., "Robust
fine-tuning of zero-shot models", CVPR 2022), and the uniform soup of the fine-tunes ("Model
soups", ICML 2022).

Every fine-tune of one starting network lies in the starting network's basin, so the mean of
their weights, and any point on the line from the start to that mean, is a network of the same
size and compute. On the mixture, the line trades the start's UTKFace accuracy for the
fine-tune's All-Age-Faces accuracy (research/mixture/results/interpolate_*.json); the stage picks
the point on val by the rule in `InterpolateConfig`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from agelens.ages import expected_age, softmax
from training.classifier import AgeClassifier, build_classifier
from training.config import ClassifierConfig, InterpolateConfig
from training.dataset import AGES, NORM, CachedData
from training.evaluate import predict_logits, served_temperatures
from training.export import ViewAveraged

log = logging.getLogger("training.interpolate")

State = dict[str, torch.Tensor]


def average_weights(states: list[State]) -> State:
    """The mean of the floating-point tensors (weights and BN statistics); integer buffers (BN's
    batch counters) from the first."""
    first = states[0]
    if any(s.keys() != first.keys() for s in states):
        raise ValueError("the networks are not one architecture (their weight names differ)")
    out: State = {}
    for key, value in first.items():
        if any(s[key].shape != value.shape for s in states):
            raise ValueError(f"the networks are not one architecture ({key} differs in shape)")
        if value.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def lerp_weights(start: State, end: State, weight: float) -> State:
    """(1 - weight) * start + weight * end, tensor by tensor; integer buffers from `start`."""
    if start.keys() != end.keys():
        raise ValueError("the networks are not one architecture (their weight names differ)")
    return {
        k: torch.lerp(v.float(), end[k].float(), weight).to(v.dtype) if v.is_floating_point() else v.clone()
        for k, v in start.items()
    }


def served_val_mae(model: AgeClassifier, data: CachedData) -> dict[str, float]:
    """Per dataset, the val MAE of the age the export serves: crop and mirror averaged, the
    distribution's mean at the temperature chosen on val (as export does)."""
    logits = predict_logits(ViewAveraged(model).eval(), data.val.crops, NORM)
    true = data.val.ages.numpy()
    t_est = served_temperatures(logits, true, AGES, data.groups("val")).estimate
    est = expected_age(softmax(logits, t_est), AGES)
    source = data.val.source.numpy()
    return {
        name: round(float(np.abs(est[source == i] - true[source == i]).mean()), 4)
        for i, name in enumerate(data.datasets)
    }


def choose_weight(points: list[dict], keep: dict[str, float]) -> dict:
    """The point with the lowest mean val MAE over the datasets, among those whose val MAE on
    each dataset in `keep` is at most the start's (weight 0) plus its allowance; the start
    itself when no other point qualifies."""
    start = next(p for p in points if p["weight"] == 0.0)

    def allowed(p: dict) -> bool:
        return all(p["val_mae"][d] <= start["val_mae"][d] + rise for d, rise in keep.items())

    return min((p for p in points if allowed(p)), key=lambda p: p["val_mean_mae"])


def run_interpolation(
    cfg: InterpolateConfig, start: AgeClassifier, members: list[Path], data: CachedData, out_dir: Path
) -> tuple[AgeClassifier, dict]:
    """Score every weight of `cfg.weights` (and 0, the start) on val, write the chosen network
    to `out_dir/best.pt` in the members' checkpoint format, and return it with the report."""
    unknown = set(cfg.keep) - set(data.datasets)
    if unknown:
        raise ValueError(f"[interpolate] keep names datasets not in the data: {sorted(unknown)}")
    checkpoints = [torch.load(m / "best.pt", map_location="cpu", weights_only=False) for m in members]
    end = average_weights([c["model"] for c in checkpoints])
    begin = start.state_dict()
    model = build_classifier(ClassifierConfig.model_validate(checkpoints[0]["config"]))
    points = []
    for weight in sorted({0.0, *cfg.weights}):
        model.load_state_dict(lerp_weights(begin, end, weight))
        val = served_val_mae(model.eval(), data)
        points.append(
            {"weight": weight, "val_mae": val, "val_mean_mae": round(float(np.mean(list(val.values()))), 4)}
        )
        log.info("interpolation weight %.2f: val MAE %s", weight, val)
    chosen = choose_weight(points, cfg.keep)
    model.load_state_dict(lerp_weights(begin, end, chosen["weight"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            **checkpoints[0],
            "model": model.state_dict(),
            "interpolation": {"weight": chosen["weight"], "members": [str(m) for m in members]},
        },
        out_dir / "best.pt",
    )
    log.info("interpolation: weight %.2f chosen on val (%s)", chosen["weight"], chosen["val_mae"])
    return model.eval(), {
        "members": [str(m) for m in members],
        "keep": cfg.keep,
        "chosen_weight": chosen["weight"],
        "points": points,
    }
