"""Service settings, all overridable by AGELENS_* environment variables (see README)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agelens.quality import QualityThresholds

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGELENS_", protected_namespaces=())

    model_store: Path = Field(REPO_ROOT / "model_store", description="Folder of <name>/<version>/ models")
    model_name: str = Field("agelens-student", description="Model to serve")
    model_version: str = Field("latest", description="Version to serve; 'latest' = highest version")
    model_variant: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="Which ONNX file of the version; auto = int8 where within 0.05 test MAE of fp32",
    )
    ort_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads (0 = onnxruntime default)")
    opencv_threads: int = Field(
        1, ge=0, description="OpenCV threads for decoding and warps (0 = OpenCV default: one per core)"
    )
    max_upload_bytes: int = Field(15 * 1024 * 1024, ge=1, description="Largest accepted request body")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest accepted width*height")
    max_faces: int = Field(20, ge=1, description="Faces kept per image (largest first)")
    max_batch_images: int = Field(16, ge=1, description="Images per /estimate/batch request")
    # The detector settings default to the manifest's: the ones that built the model's training
    # crops. Each one set here overrides it.
    detector_model: Literal["auto", "short", "full"] | None = Field(
        None, description="BlazeFace model(s): auto, short or full; unset = the manifest's"
    )
    detector_backend: Literal["litert", "mediapipe"] | None = Field(
        None,
        description="BlazeFace on LiteRT or MediaPipe's graph (reference); unset = the manifest's",
    )
    detector_min_score: float | None = Field(
        None, ge=0.0, le=1.0, description="Detection threshold; unset = the manifest's"
    )
    detector_pad_fraction: float | None = Field(
        None, ge=0.0, le=1.0, description="Padding before detection; unset = the manifest's"
    )
    detector_instances: int = Field(
        1, ge=1, le=64, description="Face detectors per worker, so its requests detect in parallel"
    )
    # Quality thresholds (agelens.quality.QualityThresholds): the defaults were chosen on val
    # images degraded by benchmarks/face_quality.py (README, "Face quality").
    quality_min_eye_distance: float = Field(
        QualityThresholds().min_eye_distance, ge=0, description="too_small below this eye distance (px)"
    )
    quality_min_sharpness: float = Field(
        QualityThresholds().min_sharpness, ge=0, description="blurred below this sharpness"
    )
    quality_max_yaw: float = Field(
        QualityThresholds().max_yaw, gt=0, description="turned beyond this yaw (degrees)"
    )
    quality_max_pitch: float = Field(
        QualityThresholds().max_pitch, gt=0, description="turned beyond this pitch (degrees)"
    )
    quality_min_brightness: float = Field(
        QualityThresholds().min_brightness, ge=0, le=255, description="too_dark below this mean grey level"
    )
    quality_max_brightness: float = Field(
        QualityThresholds().max_brightness, ge=0, le=255, description="overexposed above this mean grey level"
    )
    quality_min_contrast: float = Field(
        QualityThresholds().min_contrast, ge=0, description="low_contrast below this grey-level std"
    )
    quality_min_score: float = Field(
        QualityThresholds().min_score, ge=0, le=1, description="low_score below this detection score"
    )
    interval_level: float = Field(0.9, gt=0.0, lt=1.0, description="Probability of the age interval")
    max_concurrency: int = Field(
        16, ge=1, description="Requests in progress or queued per worker; beyond -> 503"
    )
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins")
    api_key: str | None = Field(None, description="When set, requests need header X-API-Key")
    log_level: str = Field("info")

    def quality_thresholds(self) -> QualityThresholds:
        prefix = "quality_"
        return QualityThresholds(
            **{k[len(prefix) :]: v for k, v in self.model_dump().items() if k.startswith(prefix)}
        )

    def detector_overrides(self) -> dict[str, object]:
        """The detector settings given here, by their manifest (DetectorSpec) names."""
        given = {
            "model": self.detector_model,
            "backend": self.detector_backend,
            "min_score": self.detector_min_score,
            "pad_fraction": self.detector_pad_fraction,
        }
        return {k: v for k, v in given.items() if v is not None}


@lru_cache
def get_settings() -> Settings:
    return Settings()
