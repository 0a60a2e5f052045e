"""The age model: an ONNX file run by onnxruntime and fed exactly as its manifest says.

`OnnxRunner` is the one place an ONNX file is fed: the service, `agelens evaluate` and the
export's checks all go through it. `AgeModel` adds the manifest: which file (float or int8), its
sha256, and how logits become an age, a spread and an interval. It follows a `prepare()` /
`get()` contract, as InsightFace's model_zoo does, but preprocessing is read from the manifest
rather than guessed from the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from agelens.ages import age_std, central_interval, expected_age, softmax
from agelens.faces import normalise
from agelens.manifest import MANIFEST_FILENAME, ModelManifest, Normalisation, sha256_file
from agelens.model_store import ModelNotFoundError

Variant = Literal["auto", "fp32", "int8"]

# "auto" serves the int8 file only when its test MAE, as the manifest records it, is within this
# many years of the float file's: quantisation must not cost accuracy a user would notice.
INT8_MAX_MAE_LOSS = 0.05


class OnnxRunner:
    """One ONNX file on onnxruntime's CPU provider, fed uint8 RGB crops normalised as told."""

    def __init__(
        self,
        path: Path,
        normalisation: Normalisation,
        input_name: str = "input",
        output_name: str = "logits",
        threads: int = 1,
    ) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.normalisation = normalisation
        self.input_name = input_name
        self.output_name = output_name

    def run_normalised(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Logits of already normalised input (N, 3, S, S)."""
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def logits(self, crops: NDArray[np.uint8], batch_size: int = 256) -> NDArray[np.float32]:
        """Logits of (N, S, S, 3) uint8 RGB crops, `batch_size` crops per onnxruntime call."""
        crops = np.asarray(crops)
        out = [
            self.run_normalised(normalise(crops[i : i + batch_size], self.normalisation))
            for i in range(0, len(crops), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


@dataclass
class AgePredictions:
    probabilities: NDArray[np.float32]  # (N, C), calibrated
    age: NDArray[np.float64]  # (N,)
    std: NDArray[np.float64]
    low: NDArray[np.float64]
    high: NDArray[np.float64]


def choose_variant(manifest: ModelManifest, requested: Variant) -> Literal["fp32", "int8"]:
    """Resolve the `model_variant` setting for one model version."""
    if requested != "auto":
        return requested
    int8, metrics = manifest.int8, manifest.metrics
    close = int8 is not None and metrics is not None and int8.test_mae - metrics.mae <= INT8_MAX_MAE_LOSS
    return "int8" if close else "fp32"


class AgeModel:
    def __init__(self, model_dir: Path, variant: Variant = "auto") -> None:
        self.dir = model_dir
        self.manifest = ModelManifest.load(model_dir / MANIFEST_FILENAME)
        self.variant = choose_variant(self.manifest, variant)
        self.ages = np.asarray(self.manifest.ages, dtype=np.float64)
        self.runner: OnnxRunner | None = None

    @property
    def path(self) -> Path:
        return self.dir / self._file_and_sha()[0]

    def _file_and_sha(self) -> tuple[str, str]:
        if self.variant == "fp32":
            return self.manifest.file, self.manifest.sha256
        if self.manifest.int8 is None:
            raise ModelNotFoundError(f"{self.dir} has no int8 variant")
        return self.manifest.int8.file, self.manifest.int8.sha256

    def prepare(self, threads: int = 1, verify: bool = True, warm_up: bool = True) -> None:
        file, expected = self._file_and_sha()
        path = self.dir / file
        if verify:
            digest = sha256_file(path)
            if digest != expected:
                raise ModelNotFoundError(f"{path}: sha256 {digest} does not match the manifest")
        m = self.manifest
        self.runner = OnnxRunner(path, m.normalisation, m.input_name, m.output_name, threads)
        if warm_up:
            # The first runs allocate buffers and pick kernels; do them before /ready says yes.
            s = m.alignment.crop_size
            for n in (1, 4):
                self.get(np.zeros((n, s, s, 3), dtype=np.uint8))

    def logits(self, crops: NDArray[np.uint8], batch_size: int = 256) -> NDArray[np.float32]:
        if self.runner is None:
            raise RuntimeError("call prepare() first")
        return self.runner.logits(crops, batch_size)

    def predict(self, logits: NDArray[np.floating], level: float = 0.9) -> AgePredictions:
        """What the service answers for these logits. The age is the expectation at the
        manifest's estimate temperature, the one its MAE was measured with; spread and interval
        use the calibrated temperature."""
        m = self.manifest
        probs = softmax(logits, m.temperature)
        at_estimate = (
            probs if m.estimate_temperature == m.temperature else softmax(logits, m.estimate_temperature)
        )
        age = expected_age(at_estimate, self.ages)
        low, high = central_interval(probs, self.ages, level)
        return AgePredictions(probs, age, age_std(probs, self.ages), low, high)

    def get(self, crops: NDArray[np.uint8], level: float = 0.9) -> AgePredictions:
        """All crops (N, S, S, 3) uint8 RGB, in as few onnxruntime calls as the batch allows."""
        return self.predict(self.logits(crops, batch_size=max(1, len(crops))), level)
