"""The age model: an onnxruntime session fed exactly as its manifest says.

One `prepare()` / `get()` contract, as in InsightFace's model_zoo, but preprocessing is read from
the manifest rather than guessed from the graph, and the file's sha256 is checked before use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from agelens.ages import age_std, central_interval, expected_age, softmax
from agelens.faces import normalise
from agelens.manifest import MANIFEST_FILENAME, ModelManifest, sha256_file

log = logging.getLogger(__name__)


class ModelNotFoundError(RuntimeError):
    pass


def _version_key(v: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in v.split("."))


def available_versions(store: Path, name: str) -> list[str]:
    root = store / name
    if not root.is_dir():
        return []
    return sorted((d.name for d in root.iterdir() if (d / MANIFEST_FILENAME).is_file()), key=_version_key)


def resolve_model_dir(store: Path, name: str, version: str) -> Path:
    versions = available_versions(store, name)
    if not versions:
        raise ModelNotFoundError(f"no versions of model {name!r} under {store}")
    if version == "latest":
        version = versions[-1]
    if version not in versions:
        raise ModelNotFoundError(f"model {name!r} has no version {version!r} (have: {', '.join(versions)})")
    return store / name / version


@dataclass
class AgePredictions:
    probabilities: NDArray[np.float32]  # (N, C), calibrated
    age: NDArray[np.float64]  # (N,)
    std: NDArray[np.float64]
    low: NDArray[np.float64]
    high: NDArray[np.float64]


# "auto" serves the int8 file only when its test MAE, as the manifest records it, is within this
# many years of the float file's. 2.2.0's int8 file is (5.24 against 5.23) and 35 % faster
# (benchmarks/results/model_latency.json); 2.0.0's and 2.1.0's are not (+0.65, a quantiser
# problem since fixed), so pinning those versions gets their float file.
INT8_MAX_MAE_LOSS = 0.05


def choose_variant(manifest: ModelManifest, requested: str) -> str:
    """Resolve the `model_variant` setting ("auto", "fp32" or "int8") for one model version."""
    if requested != "auto":
        return requested
    int8_mae = manifest.notes.get("int8_test_mae")
    close = isinstance(int8_mae, int | float) and int8_mae - manifest.metrics.mae <= INT8_MAX_MAE_LOSS
    return "int8" if "int8_file" in manifest.notes and close else "fp32"


class AgeModel:
    def __init__(self, model_dir: Path, variant: str = "auto") -> None:
        self.dir = model_dir
        self.manifest = ModelManifest.load(model_dir / MANIFEST_FILENAME)
        self.variant = choose_variant(self.manifest, variant)
        self.ages = np.asarray(self.manifest.ages, dtype=np.float64)
        self.session: ort.InferenceSession | None = None

    @property
    def path(self) -> Path:
        if self.variant == "int8":
            int8 = self.manifest.notes.get("int8_file")
            if not int8:
                raise ModelNotFoundError(f"{self.dir} has no int8 variant")
            return self.dir / str(int8)
        return self.dir / self.manifest.file

    def prepare(self, threads: int = 1, verify: bool = True) -> None:
        path = self.path
        if verify:
            notes = self.manifest.notes
            expected = self.manifest.sha256 if self.variant == "fp32" else str(notes.get("int8_sha256"))
            digest = sha256_file(path)
            if digest != expected:
                raise ModelNotFoundError(f"{path}: sha256 {digest} does not match the manifest")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        # Warm-up: the first run allocates buffers and picks kernels; do it before /ready says yes.
        s = self.manifest.alignment.crop_size
        for n in (1, 4):
            self.get(np.zeros((n, s, s, 3), dtype=np.uint8))

    def logits(self, crops: NDArray[np.uint8]) -> NDArray[np.float32]:
        if self.session is None:
            raise RuntimeError("call prepare() first")
        x = normalise(crops, self.manifest.normalisation)
        return self.session.run([self.manifest.output_name], {self.manifest.input_name: x})[0]

    def get(self, crops: NDArray[np.uint8], level: float = 0.9) -> AgePredictions:
        """All crops (N, S, S, 3) uint8 RGB in one onnxruntime call."""
        logits = self.logits(crops)
        # The age is the expectation at the manifest's estimate temperature, the one its MAE was
        # measured with: the raw softmax up to 3.1.0, the calibrated distribution (the one
        # returned) from 3.2.0. Spread and interval always use the calibrated temperature.
        probs = softmax(logits, self.manifest.temperature)
        at_estimate = (
            probs
            if self.manifest.estimate_temperature == self.manifest.temperature
            else softmax(logits, self.manifest.estimate_temperature)
        )
        age = expected_age(at_estimate, self.ages)
        low, high = central_interval(probs, self.ages, level)
        return AgePredictions(probs, age, age_std(probs, self.ages), low, high)
