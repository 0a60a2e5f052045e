"""Image bytes -> faces with ages. Decoding and the face path (detection, alignment) come from
agelens, shared with training; inference runs every face of a request (or of a whole batch) in
one call."""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from agelens.age_model import AgeModel
from agelens.faces import DetectorPool, FoundFaces, find_faces
from agelens.imaging import decode_image
from agelens.model_store import resolve_model_dir
from agelens.quality import FaceQuality
from agelens.schemas import (
    AgeDistribution,
    AgeInterval,
    Box,
    EstimateResponse,
    Face,
    ModelInfo,
    Timings,
)
from agelens.schemas import FaceQuality as FaceQualityModel
from service.settings import Settings


def quality_model(q: FaceQuality) -> FaceQualityModel:
    return FaceQualityModel(
        usable=q.usable,
        reasons=[str(r) for r in q.reasons],
        eye_distance=round(q.eye_distance, 1),
        box_short_side=round(q.box_short_side, 1),
        sharpness=round(q.sharpness, 4),
        roll=round(q.roll, 1),
        yaw=round(q.yaw, 1),
        pitch=round(q.pitch, 1),
        brightness=round(q.brightness, 1),
        contrast=round(q.contrast, 1),
        score=round(q.score, 4),
    )


@dataclass
class _Prepared:
    width: int
    height: int
    found: FoundFaces
    decode_ms: float


class Estimator:
    def __init__(self, model: AgeModel, settings: Settings) -> None:
        self.model = model
        self.settings = settings
        manifest = model.manifest
        # The detector that built the training crops, unless a setting overrides a part of it.
        self.detector_spec = manifest.detector.model_copy(update=settings.detector_overrides())
        self.detector = DetectorPool(self.detector_spec, size=settings.detector_instances)
        self.spec = manifest.alignment
        self.quality = settings.quality_thresholds()
        self.info = ModelInfo(name=manifest.name, version=manifest.version, variant=model.variant)

    def warm_up(self) -> None:
        # Runs every BlazeFace model once so no user request pays for its start.
        self.detector.warm_up()

    def close(self) -> None:
        self.detector.close()

    def _prepare(self, data: bytes) -> _Prepared:
        t0 = time.perf_counter()
        rgb = decode_image(data, max_pixels=self.settings.max_pixels)
        decode_ms = (time.perf_counter() - t0) * 1e3
        found = find_faces(rgb, self.spec, self.detector, self.settings.max_faces, self.quality)
        h, w = rgb.shape[:2]
        return _Prepared(w, h, found, decode_ms)

    def _crops(self, prepared: list[_Prepared]) -> NDArray[np.uint8]:
        s = self.spec.crop_size
        crops = [f.crop for p in prepared for f in p.found.faces]
        return np.stack(crops) if crops else np.zeros((0, s, s, 3), dtype=np.uint8)

    def _responses(
        self, prepared: list[_Prepared], include_distribution: bool, started: float, usable_only: bool
    ) -> list[EstimateResponse]:
        crops = self._crops(prepared)
        t0 = time.perf_counter()
        level = self.settings.interval_level
        preds = self.model.get(crops, level) if len(crops) else None
        infer_ms = (time.perf_counter() - t0) * 1e3
        ages = [int(a) for a in self.model.manifest.ages]
        out: list[EstimateResponse] = []
        i = 0
        for p in prepared:
            faces: list[Face] = []
            omitted = 0
            for af in p.found.faces:
                assert preds is not None
                if usable_only and not af.quality.usable:
                    omitted += 1
                    i += 1
                    continue
                x, y, w, h = af.face.box
                faces.append(
                    Face(
                        box=Box(x=round(x, 1), y=round(y, 1), width=round(w, 1), height=round(h, 1)),
                        score=round(af.face.score, 4),
                        age=round(float(preds.age[i]), 2),
                        age_std=round(float(preds.std[i]), 2),
                        age_interval=AgeInterval(
                            low=float(preds.low[i]), high=float(preds.high[i]), level=level
                        ),
                        quality=quality_model(af.quality),
                        distribution=AgeDistribution(
                            ages=ages, probabilities=[round(float(v), 6) for v in preds.probabilities[i]]
                        )
                        if include_distribution
                        else None,
                    )
                )
                i += 1
            share = infer_ms * len(p.found.faces) / max(1, len(crops))
            out.append(
                EstimateResponse(
                    model=self.info,
                    image_width=p.width,
                    image_height=p.height,
                    faces=faces,
                    faces_detected=p.found.detected,
                    truncated=p.found.truncated,
                    faces_unusable_omitted=omitted,
                    timings=Timings(
                        decode_ms=round(p.decode_ms, 2),
                        detect_ms=round(p.found.detect_ms, 2),
                        align_ms=round(p.found.align_ms, 2),
                        quality_ms=round(p.found.quality_ms, 3),
                        infer_ms=round(share, 2),
                        total_ms=round((time.perf_counter() - started) * 1e3, 2),
                    ),
                )
            )
        return out

    def estimate(
        self, data: bytes, include_distribution: bool = True, usable_only: bool = False
    ) -> EstimateResponse:
        started = time.perf_counter()
        return self._responses([self._prepare(data)], include_distribution, started, usable_only)[0]

    def estimate_many(
        self, items: list[bytes], include_distribution: bool = True, usable_only: bool = False
    ) -> list[EstimateResponse | Exception]:
        """Per-image errors are returned in place; all faces of all good images share one model call."""
        started = time.perf_counter()
        prepared: list[_Prepared | Exception] = []
        for data in items:
            try:
                prepared.append(self._prepare(data))
            except ValueError as exc:
                prepared.append(exc)
        good = [p for p in prepared if isinstance(p, _Prepared)]
        responses = iter(self._responses(good, include_distribution, started, usable_only))
        return [next(responses) if isinstance(p, _Prepared) else p for p in prepared]


def load_estimator(settings: Settings) -> Estimator:
    """The model the settings name, ready (warmed up) behind an Estimator: what each server
    worker and each bulk-inference worker holds."""
    # OpenCV's default pool (one thread per core) splits full-image operations across threads
    # that spin after every job: CPU the other worker needs, since each worker already keeps one
    # core busy (benchmarks/results/opencv_threads.json: 1.8 ms of CPU per request beyond wall
    # time for a colour conversion on the pool; none with one thread).
    cv2.setNumThreads(settings.opencv_threads or -1)
    model_dir = resolve_model_dir(settings.model_store, settings.model_name, settings.model_version)
    model = AgeModel(model_dir, settings.model_variant)
    model.prepare(threads=settings.ort_threads)
    estimator = Estimator(model, settings)
    estimator.warm_up()
    return estimator
