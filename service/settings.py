"""Service settings, all overridable by AGELENS_* environment variables (see README)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGELENS_", protected_namespaces=())

    model_store: Path = Field(REPO_ROOT / "model_store", description="Folder of <name>/<version>/ models")
    model_name: str = Field("agelens-student", description="Model to serve")
    model_version: str = Field("latest", description="Version to serve; 'latest' = highest version")
    model_variant: str = Field(
        "auto",
        pattern="^(auto|fp32|int8)$",
        description="Which ONNX file of the version; auto = int8 where it is within 0.05 test MAE of fp32",
    )
    ort_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads (0 = onnxruntime default)")
    opencv_threads: int = Field(
        1, ge=0, description="OpenCV threads for decoding and warps (0 = OpenCV default: one per core)"
    )
    max_upload_bytes: int = Field(15 * 1024 * 1024, ge=1, description="Largest accepted request body")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest accepted width*height")
    max_faces: int = Field(20, ge=1, description="Faces kept per image (largest first)")
    max_batch_images: int = Field(16, ge=1, description="Images per /estimate/batch request")
    detector_model: str = Field("auto", pattern="^(auto|short|full)$", description="BlazeFace model(s)")
    detector_backend: str = Field(
        "litert",
        pattern="^(litert|mediapipe)$",
        description="Run BlazeFace on LiteRT (fast) or through MediaPipe's graph (reference)",
    )
    detector_min_score: float = Field(0.5, ge=0.0, le=1.0, description="Detection threshold")
    detector_pad_fraction: float = Field(0.25, ge=0.0, le=1.0, description="Padding before detection")
    detector_instances: int = Field(
        1, ge=1, le=64, description="Face detectors per worker, so its requests detect in parallel"
    )
    interval_level: float = Field(0.9, gt=0.0, lt=1.0, description="Probability of the age interval")
    max_concurrency: int = Field(
        16, ge=1, description="Requests in progress or queued per worker; beyond -> 503"
    )
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins")
    api_key: str | None = Field(None, description="When set, requests need header X-API-Key")
    log_level: str = Field("info")


@lru_cache
def get_settings() -> Settings:
    return Settings()
