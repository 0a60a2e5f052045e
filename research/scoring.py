"""Scoring helpers the studies share: a network's answers as the export serves them.

Not used by the shipped pipeline, which scores exported ONNX files (training/export.py).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from torch import nn

from agelens.ages import expected_age, softmax
from training.dataset import AGES, NORM, CachedData
from training.evaluate import compute_metrics, fit_temperature, mae_at_temperature, predict_logits
from training.export import ViewAveraged


def metrics_entry(probs: NDArray[np.floating], data: CachedData, part: str) -> dict:
    m = compute_metrics(probs, data.part(part).ages.numpy(), AGES, part)
    return {"mae": m.mae, "cs5": m.cs5, "bands": {b.name: b.mae for b in m.bands}}


def flip_logits(
    model: nn.Module, data: CachedData, parts: tuple[str, ...] = ("val", "test")
) -> dict[str, NDArray[np.float32]]:
    """A network's logits on `parts` (val and test), flip-averaged as exported."""
    net = ViewAveraged(model).eval()
    return {part: predict_logits(net, data.part(part).crops, NORM) for part in parts}


class ServedAge:
    """The age the export stage serves for a network (flip-averaged, mean of the distribution at
    the temperature fitted on val), per face, on val and test."""

    def __init__(self, model: nn.Module, data: CachedData, parts: tuple[str, ...] = ("val",)) -> None:
        self._fit(flip_logits(model, data, parts), data)

    @classmethod
    def from_logits(cls, logits: dict[str, NDArray], data: CachedData) -> ServedAge:
        """The same, for logits averaged elsewhere (over an ensemble, or over more views of each crop)."""
        served = cls.__new__(cls)
        served._fit(logits, data)
        return served

    def _fit(self, logits: dict[str, NDArray], data: CachedData) -> None:
        self.logits = logits
        self.temperature = t = fit_temperature(self.logits["val"], data.val.ages.numpy(), AGES)
        self.estimates = {p: expected_age(softmax(lg, t), AGES) for p, lg in self.logits.items()}
        self.mae = {
            p: mae_at_temperature(lg, data.part(p).ages.numpy(), AGES, t) for p, lg in self.logits.items()
        }

    def report(self, data: CachedData) -> dict:
        return {
            "flip_calibration_temperature": round(self.temperature, 4),
            **{
                f"{p}_flip_calibrated": metrics_entry(softmax(lg, self.temperature), data, p)
                for p, lg in self.logits.items()
            },
        }
