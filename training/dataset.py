"""The cached crops as in-memory tensors, split into train / val / test."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from agelens.manifest import AlignmentSpec, DetectorSpec, Normalisation
from training.data import Record
from training.prepare import load_cache

NUM_CLASSES = 101  # ages 0..100, the last meaning 100+
AGES = np.arange(NUM_CLASSES, dtype=np.float64)
# How every network of this project is fed, written into each manifest.
NORM = Normalisation()


@dataclass
class Part:
    crops: Tensor  # (N, S, S, 3) uint8
    ages: Tensor  # (N,) int64, clipped to 0..100
    records: list[Record]
    # Index into CachedData.datasets of each face's dataset (all 0 for one dataset).
    source: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def __post_init__(self) -> None:
        if len(self.source) != len(self.records):
            self.source = torch.zeros(len(self.records), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.records)

    def of(self, source: int) -> Part:
        """The faces of one dataset."""
        idx = torch.nonzero(self.source == source).flatten()
        return Part(
            self.crops[idx], self.ages[idx], [self.records[i] for i in idx.tolist()], self.source[idx]
        )


@dataclass
class CachedData:
    train: Part
    val: Part
    test: Part
    spec: AlignmentSpec
    detector: DetectorSpec = field(default_factory=DetectorSpec)
    # The datasets the faces come from, in the order of Part.source.
    datasets: list[str] = field(default_factory=lambda: ["data"])

    def part(self, name: str) -> Part:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def groups(self, name: str) -> NDArray[np.int64] | None:
        """Each face's dataset in one part, for calibration that weighs the datasets alike
        (training.evaluate.fit_temperature); None for one dataset."""
        return self.part(name).source.numpy() if len(self.datasets) > 1 else None

    def only(self, names: list[str]) -> CachedData:
        """The faces of the named datasets only, in that order (a specialist's training data)."""
        unknown = sorted(set(names) - set(self.datasets))
        if unknown:
            raise ValueError(f"datasets not in the data: {unknown}")
        index = [self.datasets.index(n) for n in names]
        parts = {s: concat_parts([self.part(s).of(i) for i in index]) for s in ("train", "val", "test")}
        return CachedData(parts["train"], parts["val"], parts["test"], self.spec, self.detector, list(names))


def concat_parts(parts: list[Part]) -> Part:
    return Part(
        torch.cat([p.crops for p in parts]),
        torch.cat([p.ages for p in parts]),
        [r for p in parts for r in p.records],
        torch.cat([torch.full((len(p),), i, dtype=torch.int64) for i, p in enumerate(parts)]),
    )


def load_mixture(
    caches: dict[str, Path], limit_per_split: int = 0, train_fraction: float = 1.0
) -> CachedData:
    """Several datasets' caches as one, each face tagged with its dataset. The caches must share
    their alignment and detector settings: one model sees all of them."""
    loaded = {name: load_data(path, limit_per_split, train_fraction) for name, path in caches.items()}
    first = next(iter(loaded.values()))
    for name, d in loaded.items():
        if (d.spec, d.detector) != (first.spec, first.detector):
            raise ValueError(f"cache of {name} was built with other alignment or detector settings")
    if len(loaded) == 1:
        return CachedData(first.train, first.val, first.test, first.spec, first.detector, list(loaded))
    parts = {
        split: concat_parts([d.part(split) for d in loaded.values()]) for split in ("train", "val", "test")
    }
    return CachedData(parts["train"], parts["val"], parts["test"], first.spec, first.detector, list(loaded))


def age_stratified_subset(idx: NDArray[np.int64], ages: list[int], fraction: float) -> NDArray[np.int64]:
    """An even stride over the part sorted by age, so the subset keeps the age mix of the whole
    (a random draw could thin a rare age); returned in the original order."""
    by_age = idx[np.argsort(np.asarray(ages), kind="stable")]
    keep = np.linspace(0, len(idx) - 1, max(1, round(fraction * len(idx)))).round().astype(np.int64)
    return np.sort(by_age[np.unique(keep)])


def load_data(cache_dir: Path, limit_per_split: int = 0, train_fraction: float = 1.0) -> CachedData:
    crops, records, spec, detector = load_cache(cache_dir)
    parts = {}
    for name in ("train", "val", "test"):
        idx = np.array([i for i, r in enumerate(records) if r.split == name], dtype=np.int64)
        if limit_per_split:
            # Same rule as the pipeline's prepare stage: an even stride over the part.
            idx = idx[:: max(1, len(idx) // limit_per_split)][:limit_per_split]
        if name == "train" and train_fraction < 1.0:
            idx = age_stratified_subset(idx, [records[i].age for i in idx], train_fraction)
        # Copy into RAM once (~200 MB for UTKFace at 64 px); the memmap then closes.
        part_crops = torch.from_numpy(np.ascontiguousarray(crops[idx]))
        ages = torch.tensor([min(records[i].age, NUM_CLASSES - 1) for i in idx], dtype=torch.int64)
        parts[name] = Part(part_crops, ages, [records[i] for i in idx])
    return CachedData(parts["train"], parts["val"], parts["test"], spec, detector)
