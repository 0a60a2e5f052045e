"""Request/response models shared by the service and the client (pydantic only, no heavy deps)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

QualityReason = Literal[
    "too_small", "blurred", "turned", "too_dark", "overexposed", "low_contrast", "low_score"
]


class Box(BaseModel):
    x: float = Field(description="Left edge, pixels, in the image as displayed (EXIF applied)")
    y: float = Field(description="Top edge, pixels")
    width: float
    height: float


class AgeInterval(BaseModel):
    low: float
    high: float
    level: float = Field(description="Probability mass the interval is meant to hold, e.g. 0.9")


class AgeDistribution(BaseModel):
    ages: list[int]
    probabilities: list[float]


class FaceQuality(BaseModel):
    """How good a basis for an age estimate the face is (agelens.quality); the thresholds behind
    `usable` are the service's AGELENS_QUALITY_* settings."""

    usable: bool = Field(description="True when no reason below applies")
    reasons: list[QualityReason] = Field(
        description="Stable codes of what makes the face a poor basis: too_small (eye distance), blurred "
        "(sharpness), turned (yaw or pitch), too_dark / overexposed (brightness), low_contrast, low_score "
        "(detection score)"
    )
    eye_distance: float = Field(description="Distance between the eyes, pixels of the original image")
    box_short_side: float = Field(description="Short side of the face box, pixels of the original image")
    sharpness: float = Field(
        description="Laplacian energy of the aligned crop over its variance: scale- and contrast-free"
    )
    roll: float = Field(description="Tilt of the eye line, degrees (alignment undoes it)")
    yaw: float = Field(description="Head turn left/right from the keypoints, degrees (coarse)")
    pitch: float = Field(description="Head tilt up/down from the keypoints, degrees (coarse)")
    brightness: float = Field(description="Mean grey level of the aligned crop, 0-255")
    contrast: float = Field(description="Standard deviation of the crop's grey levels, 0-255")
    score: float = Field(description="Face detection confidence in [0, 1]")


class Face(BaseModel):
    box: Box
    score: float = Field(description="Face detection confidence in [0, 1]")
    age: float = Field(
        description="Estimated age in years: the expected value of the model's age distribution at "
        "the temperature its manifest names (`estimate_temperature`)"
    )
    age_std: float = Field(description="Standard deviation of the age distribution, years")
    age_interval: AgeInterval
    quality: FaceQuality
    distribution: AgeDistribution | None = None


class Timings(BaseModel):
    decode_ms: float
    detect_ms: float
    align_ms: float
    quality_ms: float = Field(0.0, description="Measuring each face's quality")
    infer_ms: float
    total_ms: float


class ModelInfo(BaseModel):
    name: str
    version: str
    variant: str | None = Field(None, description="Which ONNX file of the version answered: fp32 or int8")


class EstimateResponse(BaseModel):
    model: ModelInfo
    image_width: int
    image_height: int
    faces: list[Face]
    faces_detected: int = Field(description="Faces found before the max-faces limit was applied")
    truncated: bool = Field(False, description="True when only the largest max_faces faces were kept")
    faces_unusable_omitted: int = Field(
        0, description="Unusable faces left out of `faces` because usable_only=true was asked"
    )
    timings: Timings


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    result: EstimateResponse | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    model: ModelInfo
    items: list[BatchItem]
    total_ms: float


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code")
    message: str = Field(description="Human-readable explanation")


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str | None = None


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    model: ModelInfo | None = None


BatchItem.model_rebuild()
