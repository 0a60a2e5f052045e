"""Evaluate a model-store entry exactly as shipped: its ONNX file through onnxruntime, fed as its
manifest says, on a cached split. Used by `agelens evaluate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agelens.ages import softmax
from agelens.faces import normalise
from agelens.manifest import MANIFEST_FILENAME, ModelManifest
from training.dataset import CachedData, load_data
from training.evaluate import demographic_metrics, served_metrics


def model_logits(
    model_dir: Path, data: CachedData, splits: tuple[str, ...], variant: str = "fp32"
) -> tuple[ModelManifest, dict[str, NDArray[np.float32]]]:
    """A model-store entry's raw logits on cached splits, its file fed as its manifest says."""
    import onnxruntime as ort

    manifest = ModelManifest.load(model_dir / MANIFEST_FILENAME)
    if data.spec != manifest.alignment:
        raise ValueError("the cache was built with other alignment parameters than the model's manifest")
    file = manifest.file if variant == "fp32" else str(manifest.notes["int8_file"])
    sess = ort.InferenceSession(str(model_dir / file), providers=["CPUExecutionProvider"])

    def run(crops: NDArray[np.uint8]) -> NDArray[np.float32]:
        feed = (normalise(crops[i : i + 256], manifest.normalisation) for i in range(0, len(crops), 256))
        return np.concatenate([sess.run(None, {manifest.input_name: x})[0] for x in feed])

    return manifest, {split: run(data.part(split).crops.numpy()) for split in splits}


def evaluate_model_dir(model_dir: Path, cache: Path, split: str = "test", variant: str = "fp32") -> dict:
    data = load_data(cache)
    part = data.part(split)
    manifest, by_split = model_logits(model_dir, data, (split,), variant)
    logits = by_split[split]
    ages = np.asarray(manifest.ages, dtype=np.float64)
    t, t_est = manifest.temperature, manifest.estimate_temperature
    m = served_metrics(logits, part.ages.numpy(), ages, t, t_est, split)
    demo = demographic_metrics(softmax(logits, t_est), part.records, ages)
    return {
        "model": f"{manifest.name}/{manifest.version}",
        "variant": variant,
        "metrics": m.model_dump(),
        "demographics": {k: [b.model_dump() for b in v] for k, v in demo.items()},
    }
