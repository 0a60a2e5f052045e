"""Evaluate a model-store entry exactly as shipped: its ONNX file through onnxruntime, fed as its
manifest says, on a cached split. Used by `agelens evaluate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agelens.ages import softmax
from agelens.faces import normalise
from agelens.manifest import MANIFEST_FILENAME, ModelManifest
from training.dataset import load_data
from training.evaluate import compute_metrics, demographic_metrics, interval_coverage


def evaluate_model_dir(model_dir: Path, cache: Path, split: str = "test", variant: str = "fp32") -> dict:
    import onnxruntime as ort

    manifest = ModelManifest.load(model_dir / MANIFEST_FILENAME)
    data = load_data(cache)
    if data.spec != manifest.alignment:
        raise ValueError("the cache was built with other alignment parameters than the model's manifest")
    part = data.part(split)
    file = manifest.file if variant == "fp32" else str(manifest.notes["int8_file"])
    sess = ort.InferenceSession(str(model_dir / file), providers=["CPUExecutionProvider"])
    crops = part.crops.numpy()
    logits = np.concatenate(
        [
            sess.run(None, {manifest.input_name: normalise(crops[i : i + 256], manifest.normalisation)})[0]
            for i in range(0, len(crops), 256)
        ]
    )
    ages = np.asarray(manifest.ages, dtype=np.float64)
    m = compute_metrics(softmax(logits), part.ages.numpy(), ages, split)
    calibrated = interval_coverage(softmax(logits, manifest.temperature), part.ages.numpy(), ages)
    m.extra["coverage90_calibrated"] = round(calibrated, 4)
    demo = demographic_metrics(softmax(logits), part.records, ages)
    return {
        "model": f"{manifest.name}/{manifest.version}",
        "variant": variant,
        "metrics": m.model_dump(),
        "demographics": {k: [b.model_dump() for b in v] for k, v in demo.items()},
    }
