"""The model manifest: the single source of truth for how a shipped model must be fed.

Training writes it next to the ONNX file; the face pipeline and the service read it. Nothing about
preprocessing is guessed from the graph (unlike InsightFace's model_zoo): crop size, alignment
template, margin and normalisation all come from here, so training and serving cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

MANIFEST_FILENAME = "manifest.json"

# Canonical positions of (right eye, left eye, nose tip, mouth centre) in a unit face box, where
# "right" is the subject's right (image left). Measured as the mean short-range BlazeFace
# keypoints over 600 random UTKFace faces (200 px frames), then made left-right symmetric. The
# crops therefore frame faces the way UTKFace does (forehead, chin and some hair included), so
# the model sees the same framing at serving time as in training.
DEFAULT_TEMPLATE: list[tuple[float, float]] = [
    (0.3063, 0.3075),
    (0.6937, 0.3075),
    (0.5000, 0.5316),
    (0.5000, 0.7274),
]


class Normalisation(BaseModel):
    """Per-channel affine normalisation applied to RGB pixels scaled to [0, 1]."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    color_order: str = Field("RGB", pattern="^RGB$")
    layout: str = Field("NCHW", pattern="^NCHW$")


class AlignmentSpec(BaseModel):
    """How a detected face becomes the model's input crop.

    `template` holds the target keypoints in a unit face box; `margin` extends that box on every
    side (as a fraction of its size) to keep forehead, chin and hair, which carry age cues. A
    negative margin shrinks the box instead: a tighter crop, more pixels on the inner face.
    """

    crop_size: int = Field(64, ge=16, le=512)
    margin: float = Field(0.0, ge=-0.25, le=1.0)
    template: list[tuple[float, float]] = Field(default_factory=lambda: list(DEFAULT_TEMPLATE))
    keypoints: list[str] = Field(
        default_factory=lambda: ["right_eye", "left_eye", "nose_tip", "mouth_center"]
    )

    @model_validator(mode="after")
    def _check_template(self) -> AlignmentSpec:
        if len(self.template) != len(self.keypoints):
            raise ValueError("template and keypoints must have the same length")
        return self

    def template_pixels(self) -> list[tuple[float, float]]:
        """Template keypoints in crop pixel coordinates (margin included)."""
        scale = self.crop_size / (1.0 + 2.0 * self.margin)
        return [((x + self.margin) * scale, (y + self.margin) * scale) for x, y in self.template]


class DetectorSpec(BaseModel):
    """How BlazeFace finds faces (agelens.faces.FaceDetector). The manifest records the settings
    that built the model's training crops, and the service detects with them unless told
    otherwise, so a face is found and framed the way training saw it."""

    min_score: float = Field(0.5, ge=0.0, le=1.0, description="Detection threshold")
    # Faces that fill the frame (selfies, already-cropped uploads, UTKFace) are missed or badly
    # localised by BlazeFace unless the image is padded first: every side gets this fraction.
    pad_fraction: float = Field(0.25, ge=0.0, le=1.0, description="Padding before detection")
    # Detection runs on a copy whose longest side is at most this; alignment uses full resolution.
    max_side: int = Field(1280, ge=64)
    # "short": short-range model (128 px input) on the padded image; precise keypoints for faces
    # that fill a good part of the frame (on UTKFace: eye-distance spread 0.021 against 0.048 for
    # full-range). "full": full-range model (192 px input) on the unpadded image (and tiles of
    # large ones); finds small faces in group photos. "auto" runs both and merges them.
    model: Literal["auto", "short", "full"] = "auto"
    # "litert": MediaPipe's BlazeFace files run directly on LiteRT with MediaPipe's pre- and
    # post-processing (agelens.blazeface; the same detections, faster).
    # "mediapipe": MediaPipe's own calculator graph, the reference.
    backend: Literal["litert", "mediapipe"] = "litert"
    # Two detections whose boxes overlap more than this are the same face.
    nms_iou: float = Field(0.3, gt=0.0, le=1.0)
    # Ranking bonus of short-range detections over full-range ones in "auto".
    short_bonus: float = Field(0.1, ge=0.0)
    # Images whose long side exceeds this also get three tiled full-range passes.
    tile_above: int = Field(800, ge=64)

    model_config = {"frozen": True, "protected_namespaces": ()}


class Int8Variant(BaseModel):
    """The statically quantised copy of the model file, and what it was measured to cost."""

    file: str
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    bytes: int = Field(gt=0)
    test_mae: float = Field(ge=0.0)
    test_cs5: float = Field(ge=0.0, le=1.0)
    coverage90_calibrated: float = Field(ge=0.0, le=1.0)


class AgeBand(BaseModel):
    name: str
    mae: float
    cs5: float
    n: int
    # Mean of (estimate - label) in years: below 0, the group is estimated too young.
    bias: float | None = None


class Metrics(BaseModel):
    split: str = "test"
    n: int
    mae: float
    cs5: float = Field(description="Cumulative score: share of faces with |error| <= 5 years")
    bands: list[AgeBand] = Field(default_factory=list)
    extra: dict[str, float] = Field(default_factory=dict)


class ModelManifest(BaseModel):
    name: str
    version: str
    created: str
    file: str = "model.onnx"
    sha256: str
    input_name: str = "input"
    output_name: str = "logits"
    alignment: AlignmentSpec
    detector: DetectorSpec = Field(
        default_factory=DetectorSpec, description="Detector settings that built the training crops"
    )
    normalisation: Normalisation
    ages: list[int] = Field(description="Age in years of each output class, in order")
    open_ended_last_class: bool = Field(True, description="The last class means 'this age or older'")
    # Temperature applied to logits before softmax; fitted on val so that intervals are calibrated.
    temperature: float = Field(1.0, gt=0.0)
    # Temperature of the distribution whose expectation is the age estimate: 1.0 (the raw softmax)
    # or `temperature`, chosen on val by the export. With `temperature`, the age is the mean of
    # the very distribution the service returns. The test figures in `metrics` use it.
    estimate_temperature: float = Field(1.0, gt=0.0)
    parameters: int | None = None
    training_data: str = ""
    split_sha256: str = ""
    metrics: Metrics | None = None
    int8: Int8Variant | None = None
    notes: dict[str, str | float | int] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ModelManifest:
        return cls.model_validate_json(Path(path).read_text())

    def save(self, path: Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dump_json(obj: object, path: Path) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
