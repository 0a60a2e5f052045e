"""Evaluate a model-store entry exactly as shipped: its ONNX file through the service's
`AgeModel`, fed as its manifest says, on a split's faces.

Two sources of faces: a crop cache (fast; it must have been built with the manifest's alignment
and detector settings), or the images themselves, run through `agelens.faces.find_faces` with
the manifest's settings, as the service runs them. Used by `agelens evaluate`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from agelens.age_model import AgeModel
from agelens.ages import softmax
from agelens.faces import FaceDetector
from agelens.manifest import ModelManifest
from training.data import Record, read_split
from training.dataset import CachedData, load_data
from training.dataset_report import dataset_report
from training.datasets import load_registry
from training.evaluate import demographic_metrics, served_metrics
from training.prepare import largest_face

log = logging.getLogger(__name__)


def load_model(model_dir: Path, variant: Literal["fp32", "int8"]) -> AgeModel:
    model = AgeModel(model_dir, variant)
    model.prepare(warm_up=False)
    return model


def report(
    manifest: ModelManifest,
    variant: str,
    logits: NDArray[np.float32],
    records: list[Record],
    split: str,
    source: dict[str, object],
) -> dict:
    """The served metrics of these logits (age at the estimate temperature, the interval at the
    calibrated one), overall, per age band and per demographic group."""
    ages = np.asarray(manifest.ages, dtype=np.float64)
    true = np.array([min(r.age, int(ages[-1])) for r in records], dtype=np.float64)
    t, t_est = manifest.temperature, manifest.estimate_temperature
    m = served_metrics(logits, true, ages, t, t_est, split)
    demo = demographic_metrics(softmax(logits, t_est), records, ages)
    return {
        "model": f"{manifest.name}/{manifest.version}",
        "variant": variant,
        "source": source,
        "metrics": m.model_dump(),
        "demographics": {k: [b.model_dump() for b in v] for k, v in demo.items()},
    }


def check_cache_fits(data: CachedData, manifest: ModelManifest, what: str = "the cache") -> None:
    """Refuse crops aligned or detected otherwise than the model's manifest says."""
    if (data.spec, data.detector) != (manifest.alignment, manifest.detector):
        raise ValueError(
            f"{what} was built with other alignment or detector settings than the model's "
            "manifest: rebuild it with `agelens prepare`, or evaluate on the images (--data)"
        )


def model_logits(
    model_dir: Path,
    data: CachedData,
    splits: tuple[str, ...],
    variant: Literal["fp32", "int8"] = "fp32",
) -> tuple[ModelManifest, dict[str, NDArray[np.float32]]]:
    """A model-store entry's raw logits on cached splits, its file fed as the service feeds it."""
    model = load_model(model_dir, variant)
    manifest = model.manifest
    check_cache_fits(data, manifest)
    return manifest, {split: model.logits(data.part(split).crops.numpy()) for split in splits}


def evaluate_on_cache(
    model_dir: Path, cache: Path, split: str = "test", variant: Literal["fp32", "int8"] = "fp32"
) -> dict:
    data = load_data(cache)
    manifest, logits = model_logits(model_dir, data, (split,), variant)
    return report(manifest, variant, logits[split], data.part(split).records, split, {"cache": str(cache)})


def evaluate_on_images(
    model_dir: Path,
    image_root: Path,
    split_file: Path,
    split: str = "test",
    variant: Literal["fp32", "int8"] = "fp32",
) -> dict:
    """Every image of the split part through the service's face path; an image with no face
    found (or that cannot be read) is counted and left out of the metrics."""
    model = load_model(model_dir, variant)
    manifest = model.manifest
    detector = FaceDetector(manifest.detector)
    records = [r for r in read_split(split_file) if r.split == split]
    crops, kept, missed = [], [], []
    for i, r in enumerate(records):
        face, _ = largest_face(image_root / r.filename, manifest.alignment, detector)
        if face is not None:
            crops.append(face.crop)
            kept.append(r)
        else:
            missed.append(r.filename)
        if (i + 1) % 500 == 0:
            log.info("evaluate: %d/%d images", i + 1, len(records))
    detector.close()
    logits = model.logits(np.stack(crops))
    source = {"images": str(image_root), "split_file": str(split_file), "no_face": len(missed)}
    return report(manifest, variant, logits, kept, split, source)


def evaluate_datasets(
    model_dir: Path,
    names: list[str],
    split: str = "test",
    variant: Literal["fp32", "int8"] = "fp32",
) -> dict:
    """A model-store entry on each registry dataset's cached split, one report per dataset
    (training/dataset_report.py): what the model card gives, measured on the shipped file."""
    registry = load_registry()
    model = load_model(model_dir, variant)
    manifest = model.manifest
    ages = np.asarray(manifest.ages, dtype=np.float64)
    out: dict[str, object] = {
        "model": f"{manifest.name}/{manifest.version}",
        "variant": variant,
        "split": split,
    }
    reports = {}
    for name in names:
        entry = registry[name]
        data = load_data(entry.cache)
        check_cache_fits(data, manifest, f"the {name} cache")
        part = data.part(split)
        logits = model.logits(part.crops.numpy())
        reports[name] = dataset_report(
            name, logits, part, ages, manifest.temperature, manifest.estimate_temperature, split
        ).model_dump()
    out["datasets"] = reports
    maes = [r["metrics"]["mae"] for r in reports.values()]
    out["mean_mae"] = round(float(np.mean(maes)), 4)
    return out


def cached_datasets() -> list[str]:
    """The registry's datasets whose crop cache has been built (`agelens prepare --dataset`)."""
    return [name for name, e in load_registry().items() if (e.cache / "crops.npy").is_file()]
