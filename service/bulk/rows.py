"""One flat row per face, or per image that gave no face: the output of a bulk job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from agelens.imaging import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from agelens.schemas import EstimateResponse
from service.estimator import Estimator

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("face", pa.int32()),
        ("faces_in_image", pa.int32()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("width", pa.float64()),
        ("height", pa.float64()),
        ("score", pa.float64()),
        ("age", pa.float64()),
        ("age_std", pa.float64()),
        ("age_low", pa.float64()),
        ("age_high", pa.float64()),
        ("usable", pa.bool_()),
        ("reasons", pa.string()),
        ("eye_distance", pa.float64()),
        ("sharpness", pa.float64()),
        ("yaw", pa.float64()),
        ("pitch", pa.float64()),
        ("brightness", pa.float64()),
        ("contrast", pa.float64()),
        ("error", pa.string()),
        ("message", pa.string()),
        ("model", pa.string()),
    ]
)
COLUMNS = SCHEMA.names

Row = dict[str, Any]


def _empty(path: str, model: str) -> Row:
    row: Row = dict.fromkeys(COLUMNS)
    row.update(path=path, model=model)
    return row


def error_code(exc: BaseException) -> str:
    """The same codes the HTTP API gives (service/errors.py), plus unreadable for files."""
    if isinstance(exc, ImageTooLargeError):
        return "image_too_large"
    if isinstance(exc, UnsupportedImageError):
        return "unsupported_media_type"
    if isinstance(exc, ImageDecodeError):
        return "invalid_image"
    if isinstance(exc, OSError):
        return "unreadable"
    return "invalid_image"


def error_row(path: str, model: str, code: str, message: str) -> Row:
    row = _empty(path, model)
    row.update(faces_in_image=0, error=code, message=message)
    return row


def face_rows(path: str, result: EstimateResponse) -> list[Row]:
    model = f"{result.model.name}/{result.model.version} {result.model.variant}"
    if not result.faces:
        return [error_row(path, model, "no_face", "no face was found in the image")]
    rows = []
    for i, f in enumerate(result.faces):
        row = _empty(path, model)
        q = f.quality
        row.update(
            face=i,
            faces_in_image=len(result.faces),
            x=f.box.x,
            y=f.box.y,
            width=f.box.width,
            height=f.box.height,
            score=f.score,
            age=f.age,
            age_std=f.age_std,
            age_low=f.age_interval.low,
            age_high=f.age_interval.high,
            usable=q.usable,
            reasons=",".join(q.reasons),
            eye_distance=q.eye_distance,
            sharpness=q.sharpness,
            yaw=q.yaw,
            pitch=q.pitch,
            brightness=q.brightness,
            contrast=q.contrast,
        )
        rows.append(row)
    return rows


def rows_for_images(estimator: Estimator, paths: list[str]) -> list[Row]:
    """Every image through the service's path (decode, find_faces, the model, in one model call
    for all faces of the batch); a file that cannot be read or decoded gives an error row."""
    model = f"{estimator.info.name}/{estimator.info.version} {estimator.info.variant}"
    blobs: list[bytes | None] = []
    rows_by_index: dict[int, list[Row]] = {}
    for i, p in enumerate(paths):
        try:
            blobs.append(Path(p).read_bytes())
        except OSError as exc:
            blobs.append(None)
            message = f"{type(exc).__name__}: {exc.strerror or exc}"
            rows_by_index[i] = [error_row(p, model, "unreadable", message)]
    readable = [i for i, b in enumerate(blobs) if b is not None]
    good = [b for b in blobs if b is not None]
    try:
        results = estimator.estimate_many(good, include_distribution=False)
    except Exception:
        # Something beyond the decoder's typed errors: find which image, one at a time, so that
        # one broken file costs its own row and not the batch's.
        results = []
        for b in good:
            try:
                results.append(estimator.estimate(b, include_distribution=False))
            except Exception as exc:
                results.append(exc)
    for i, res in zip(readable, results, strict=True):
        if isinstance(res, EstimateResponse):
            rows_by_index[i] = face_rows(paths[i], res)
        else:
            rows_by_index[i] = [error_row(paths[i], model, error_code(res), str(res))]
    return [r for i in range(len(paths)) for r in rows_by_index[i]]
