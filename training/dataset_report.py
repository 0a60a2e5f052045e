"""What the service answers, measured per dataset of a mixture: MAE, CS@5, interval coverage, age
bands with their signed error, gender, and the groups a dataset labels (UTKFace's race)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from agelens.ages import softmax
from agelens.manifest import AgeBand, Metrics
from training.dataset import Part
from training.datasets import load_registry
from training.evaluate import GENDERS, group_metrics, served_metrics


class DatasetReport(BaseModel):
    dataset: str
    title: str
    metrics: Metrics
    # "gender" for every dataset, "race" where the dataset labels it.
    groups: dict[str, list[AgeBand]]


def dataset_report(
    name: str,
    logits: NDArray[np.floating],
    part: Part,
    ages: NDArray[np.floating],
    temperature: float,
    estimate_temperature: float,
    split: str = "test",
) -> DatasetReport:
    entry = load_registry().get(name)
    true = np.array([min(r.age, int(ages[-1])) for r in part.records], dtype=np.float64)
    metrics = served_metrics(logits, true, ages, temperature, estimate_temperature, split)
    pred = softmax(logits, estimate_temperature) @ ages
    groups = {
        "gender": group_metrics(
            pred,
            true,
            [GENDERS.get(r.gender, "unknown") if r.gender is not None else "unknown" for r in part.records],
        )
    }
    if entry is not None and entry.race_names:
        groups["race"] = group_metrics(
            pred, true, [entry.race_name(r.race) or "unknown" for r in part.records]
        )
    return DatasetReport(dataset=name, title=entry.title if entry else name, metrics=metrics, groups=groups)


def reports_by_dataset(
    logits: NDArray[np.floating],
    part: Part,
    datasets: list[str],
    ages: NDArray[np.floating],
    temperature: float,
    estimate_temperature: float,
    split: str = "test",
) -> dict[str, DatasetReport]:
    """One report per dataset of `part` (Part.source indexes `datasets`)."""
    source = part.source.numpy()
    out = {}
    for i, name in enumerate(datasets):
        rows = np.flatnonzero(source == i)
        if len(rows):
            out[name] = dataset_report(
                name, logits[rows], part.of(i), ages, temperature, estimate_temperature, split
            )
    return out
