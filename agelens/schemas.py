"""Request/response models shared by the service and the client (pydantic only, no heavy deps)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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


class Face(BaseModel):
    box: Box
    score: float = Field(description="Face detection confidence in [0, 1]")
    age: float = Field(
        description="Estimated age in years: the expected value of the model's age distribution at "
        "the temperature its manifest names (`estimate_temperature`)"
    )
    age_std: float = Field(description="Standard deviation of the age distribution, years")
    age_interval: AgeInterval
    distribution: AgeDistribution | None = None


class Timings(BaseModel):
    decode_ms: float
    detect_ms: float
    align_ms: float
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
