"""Turning a class distribution over ages into an estimate, a spread and an interval."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

AGE_BANDS: list[tuple[str, int, int]] = [
    ("0-12", 0, 12),
    ("13-19", 13, 19),
    ("20-39", 20, 39),
    ("40-59", 40, 59),
    ("60+", 60, 10_000),
]


def softmax(logits: NDArray[np.floating], temperature: float = 1.0) -> NDArray[np.float32]:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def expected_age(probs: NDArray[np.floating], ages: NDArray[np.floating]) -> NDArray[np.float64]:
    return np.asarray(probs, dtype=np.float64) @ np.asarray(ages, dtype=np.float64)


def age_std(probs: NDArray[np.floating], ages: NDArray[np.floating]) -> NDArray[np.float64]:
    p = np.asarray(probs, dtype=np.float64)
    a = np.asarray(ages, dtype=np.float64)
    mean = p @ a
    var = p @ (a**2) - mean**2
    return np.sqrt(np.clip(var, 0.0, None))


def central_interval(
    probs: NDArray[np.floating], ages: NDArray[np.floating], level: float = 0.9
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Equal-tailed interval from the discrete CDF: the ages at the (1-level)/2 and (1+level)/2 quantiles."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    a = np.asarray(ages, dtype=np.float64)
    cdf = np.cumsum(p, axis=-1)
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    lo_idx = np.argmax(cdf >= lo_q - 1e-9, axis=-1)
    hi_idx = np.argmax(cdf >= hi_q - 1e-9, axis=-1)
    return a[lo_idx], a[hi_idx]


def band_of(age: float) -> str:
    for name, lo, hi in AGE_BANDS:
        if lo <= age <= hi:
            return name
    return AGE_BANDS[-1][0]
