"""Metrics: MAE and CS@5 overall, per age band, per gender and per race; interval coverage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from agelens.ages import AGE_BANDS, central_interval, expected_age, softmax
from agelens.manifest import AgeBand, Metrics, Normalisation
from training.augment import normalised_batches
from training.data import Record
from training.device import module_device

GENDERS = {0: "male", 1: "female"}
RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}


@torch.no_grad()
def predict_logits(
    model: nn.Module, crops: Tensor, norm: Normalisation, batch_size: int = 512
) -> NDArray[np.float32]:
    model.eval()
    out = [
        model(x).float().cpu().numpy()
        for x in normalised_batches(crops, norm, module_device(model), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 101), dtype=np.float32)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value) over seeds, rounded as reported."""
    a = np.asarray(values, dtype=np.float64)
    return round(float(a.mean()), 4), round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4)


def _mae_cs5(pred: NDArray[np.floating], true: NDArray[np.floating]) -> tuple[float, float]:
    err = np.abs(pred - true)
    return float(err.mean()), float((err <= 5).mean())


def paired_mae_change(
    new: NDArray[np.floating], old: NDArray[np.floating], true: NDArray[np.floating]
) -> dict[str, float]:
    """MAE change from the `old` to the `new` estimates of the same faces, with the standard error
    of the face-by-face difference. Two estimators that share most of their errors (a network
    and its continuation, or two readouts of one distribution) can be told apart by much less
    than the seed spread of independent runs; a change under about two standard errors is not
    one."""
    t = np.asarray(true, dtype=np.float64)
    d = np.abs(np.asarray(new, dtype=np.float64) - t) - np.abs(np.asarray(old, dtype=np.float64) - t)
    return {
        "mae_change": round(float(d.mean()), 4),
        "std_error": round(float(d.std(ddof=1) / np.sqrt(len(d))), 4),
    }


def group_metrics(
    pred: NDArray[np.floating], true: NDArray[np.floating], keys: Sequence[str]
) -> list[AgeBand]:
    out = []
    for key in dict.fromkeys(keys):
        m = np.array([k == key for k in keys])
        if m.any():
            mae, cs5 = _mae_cs5(pred[m], true[m])
            bias = float((pred[m] - true[m]).mean())
            out.append(
                AgeBand(name=key, mae=round(mae, 4), cs5=round(cs5, 4), n=int(m.sum()), bias=round(bias, 4))
            )
    return out


def interval_coverage(
    probs: NDArray[np.floating],
    true_ages: NDArray[np.floating],
    ages: NDArray[np.floating],
    level: float = 0.9,
) -> float:
    """Share of faces whose true age lies in the central `level` interval of their distribution."""
    lo, hi = central_interval(probs, ages, level)
    true = np.asarray(true_ages, dtype=np.float64)
    return float(((true >= lo) & (true <= hi)).mean())


def band_keys(true: NDArray[np.floating]) -> list[str]:
    keys = []
    for a in true:
        for name, lo, hi in AGE_BANDS:
            if lo <= a <= hi:
                keys.append(name)
                break
    return keys


def compute_metrics(
    probs: NDArray[np.floating],
    true_ages: NDArray[np.floating],
    ages: NDArray[np.floating],
    split: str = "test",
) -> Metrics:
    pred = expected_age(probs, ages)
    true = np.asarray(true_ages, dtype=np.float64)
    mae, cs5 = _mae_cs5(pred, true)
    bands = group_metrics(pred, true, band_keys(true))
    order = [b[0] for b in AGE_BANDS]
    bands.sort(key=lambda b: order.index(b.name))
    coverage = interval_coverage(probs, true, ages, 0.9)
    return Metrics(
        split=split,
        n=len(true),
        mae=round(mae, 4),
        cs5=round(cs5, 4),
        bands=bands,
        extra={"coverage90": round(coverage, 4)},
    )


def served_metrics(
    logits: NDArray[np.floating],
    true_ages: NDArray[np.floating],
    ages: NDArray[np.floating],
    temperature: float,
    estimate_temperature: float,
    split: str = "test",
) -> Metrics:
    """The metrics of what the service answers for these logits: the age at the estimate
    temperature, and the 90 % interval at the calibrated one (`coverage90_calibrated`)."""
    m = compute_metrics(softmax(logits, estimate_temperature), true_ages, ages, split)
    m.extra.pop("coverage90")  # the interval of the estimate's distribution: not what is served
    m.extra["coverage90_calibrated"] = round(
        interval_coverage(softmax(logits, temperature), true_ages, ages), 4
    )
    return m


def demographic_metrics(
    probs: NDArray[np.floating], records: list[Record], ages: NDArray[np.floating]
) -> dict[str, list[AgeBand]]:
    pred = expected_age(probs, ages)
    true = np.array([min(r.age, 100) for r in records], dtype=np.float64)

    def label(mapping: dict[int, str], v: int | None) -> str:
        return mapping.get(v, "unknown") if v is not None else "unknown"

    return {
        "gender": group_metrics(pred, true, [label(GENDERS, r.gender) for r in records]),
        "race": group_metrics(pred, true, [label(RACES, r.race) for r in records]),
    }


def per_group_mean(
    score: Callable[[NDArray[np.bool_]], float], groups: NDArray[np.integer] | None, n: int
) -> float:
    """`score` of every face together, or, given each face's group (its dataset), the mean of
    the groups' scores: each dataset weighs the same whatever its size."""
    if groups is None:
        return score(np.ones(n, dtype=bool))
    return float(np.mean([score(groups == g) for g in np.unique(groups)]))


def fit_temperature(
    logits: NDArray[np.floating],
    true_ages: NDArray[np.floating],
    ages: NDArray[np.floating],
    level: float = 0.9,
    grid: Callable[[], NDArray[np.floating]] | None = None,
    groups: NDArray[np.integer] | None = None,
) -> float:
    """Temperature for the softmax so that the central `level` interval covers `level` of val
    (with `groups`, the mean of the groups' coverage).

    Coverage grows monotonically with T (a flatter distribution gives wider intervals), so a
    fine grid search is exact enough and cannot diverge, unlike an NLL fit that would optimise
    a different target than the interval we report. On a mixture, one temperature cannot cover
    every dataset alike (the network is surer of some than of others); pooled, the largest
    dataset would set it and the others' intervals would be the short ones, so each dataset
    weighs the same.
    """
    temps = grid() if grid else np.exp(np.linspace(np.log(0.3), np.log(5.0), 200))
    true = np.asarray(true_ages, dtype=np.float64)
    best_t, best_gap = 1.0, np.inf
    for t in temps:
        probs = softmax(logits, float(t))
        covered = per_group_mean(
            lambda rows, p=probs: interval_coverage(p[rows], true[rows], ages, level), groups, len(true)
        )
        gap = abs(covered - level)
        if gap < best_gap:
            best_t, best_gap = float(t), gap
    return best_t


def mae_at_temperature(
    logits: NDArray[np.floating], true_ages: NDArray[np.floating], ages: NDArray[np.floating], t: float
) -> float:
    """MAE of the expectation of softmax(logits / t)."""
    pred = expected_age(softmax(logits, t), ages)
    return round(float(np.abs(pred - np.asarray(true_ages, dtype=np.float64)).mean()), 4)


def choose_estimate_temperature(
    val_logits: NDArray[np.floating],
    val_true: NDArray[np.floating],
    ages: NDArray[np.floating],
    calibrated: float,
) -> tuple[float, dict[str, float]]:
    """The temperature whose expectation is the age estimate, chosen on val: the raw softmax (1.0)
    or the calibrated one, whichever has the lower val MAE, and both val MAEs.

    The students are trained toward Gaussian-smoothed labels and softened teachers, so their raw
    distributions are wider than the truth (the calibrated temperature is below 1). The mean of a
    too-wide distribution over 0-100 is pulled toward the middle of the range, which is the bias
    users see for children and old people; the calibrated distribution pulls less. Only these two
    candidates: one more free parameter fitted for MAE would be one more thing tuned on 2,362
    faces, and with the calibrated one the age is the mean of the distribution that is returned.
    """
    maes = {
        "raw": mae_at_temperature(val_logits, val_true, ages, 1.0),
        "calibrated": mae_at_temperature(val_logits, val_true, ages, calibrated),
    }
    return (calibrated if maes["calibrated"] < maes["raw"] else 1.0), maes


class ServedTemperatures(NamedTuple):
    interval: float
    estimate: float
    # The val MAE of the two readouts the estimate was chosen between ("raw", "calibrated").
    val_maes: dict[str, float]


def served_temperatures(
    val_logits: NDArray[np.floating],
    val_true: NDArray[np.floating],
    ages: NDArray[np.floating],
    groups: NDArray[np.integer] | None = None,
) -> ServedTemperatures:
    """The two temperatures an export writes into its manifest, both fitted on val: the
    interval's (90 % coverage; each dataset weighing the same when `groups` gives each face's
    dataset) and the age estimate's (raw or calibrated, whichever has the lower val MAE over
    every face: a guard against a readout that is worse than the raw softmax, not a fit)."""
    t = fit_temperature(val_logits, val_true, ages, groups=groups)
    return ServedTemperatures(t, *choose_estimate_temperature(val_logits, val_true, ages, t))
