"""The model manifest: the single source of truth for how a shipped model must be fed.

Training writes it next to the ONNX file; the face pipeline and the service read it. Nothing about
preprocessing is guessed from the graph (unlike InsightFace's model_zoo): crop size, alignment
template, margin and normalisation all come from here, so training and serving cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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


class AgeBand(BaseModel):
    name: str
    mae: float
    cs5: float
    n: int
    # Mean of (estimate - label) in years: below 0, the group is estimated too young. Absent in
    # manifests written before it was measured.
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
    normalisation: Normalisation
    ages: list[int] = Field(description="Age in years of each output class, in order")
    open_ended_last_class: bool = Field(True, description="The last class means 'this age or older'")
    # Temperature applied to logits before softmax; fitted on val so that intervals are calibrated.
    temperature: float = Field(1.0, gt=0.0)
    # Temperature of the distribution whose expectation is the age estimate. 1.0 (the default,
    # what every model up to 3.1.0 was measured with) is the raw softmax. From 3.2.0 the export
    # picks, on val, between 1.0 and `temperature`: with `temperature`, the age is the mean of the
    # very distribution the service returns. The test figures in `metrics` use this temperature.
    estimate_temperature: float = Field(1.0, gt=0.0)
    parameters: int | None = None
    training_data: str = ""
    split_sha256: str = ""
    metrics: Metrics | None = None
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
