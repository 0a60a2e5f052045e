"""How good a basis each face is for an age estimate: size, sharpness, pose, exposure and the
detector's confidence, with `usable` and the stable reason codes of what is wrong.

Measured in `agelens.faces.find_faces` for every face it returns, so the service, `agelens
estimate` and `agelens batch` report the same values. The default thresholds come from
`benchmarks/face_quality.py` (chosen on val images, degraded; the output is committed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field


class Reason(StrEnum):
    TOO_SMALL = "too_small"
    BLURRED = "blurred"
    TURNED = "turned"
    TOO_DARK = "too_dark"
    OVEREXPOSED = "overexposed"
    LOW_CONTRAST = "low_contrast"
    LOW_SCORE = "low_score"


class QualityThresholds(BaseModel):
    """A face is usable when every measure is on the right side of its threshold."""

    model_config = ConfigDict(frozen=True)

    # Chosen on val (300 UTKFace and All-Age-Faces val images, 19 degradations, and every clean
    # val image; benchmarks/results/face_quality_val*.json): where the error of the faces past a
    # threshold rises clearly above that of the clean faces, while few clean faces cross it. The
    # pose limits are loose because the keypoint geometry is coarse: on clean UTKFace val faces a
    # pitch over 20 degrees meant mostly infants (their MAE 2.7), not faces looking down.
    min_eye_distance: float = Field(14.0, ge=0, description="Inter-ocular distance, original pixels")
    min_sharpness: float = Field(0.35, ge=0, description="Laplacian energy of the crop over its variance")
    max_yaw: float = Field(65.0, gt=0, description="Degrees, from the keypoints")
    max_pitch: float = Field(28.0, gt=0, description="Degrees, from the keypoints")
    min_brightness: float = Field(25.0, ge=0, le=255, description="Mean grey level of the crop")
    max_brightness: float = Field(212.0, ge=0, le=255, description="Mean grey level of the crop")
    min_contrast: float = Field(12.0, ge=0, description="Standard deviation of the crop's grey levels")
    min_score: float = Field(0.75, ge=0, le=1, description="Detection score")


@dataclass(frozen=True)
class FaceQuality:
    eye_distance: float  # pixels of the original image
    box_short_side: float  # pixels of the original image
    sharpness: float
    roll: float  # degrees; positive: the face's right eye lower than its left (clockwise tilt)
    yaw: float  # degrees; negative: the nose tip towards the image's right
    pitch: float  # degrees; positive: looking down
    brightness: float  # 0-255
    contrast: float  # 0-255
    score: float
    reasons: tuple[Reason, ...]

    @property
    def usable(self) -> bool:
        return not self.reasons


# The keypoints' order (agelens.faces.KEYPOINT_INDEX): eyes, nose tip, mouth, ear tragions.
_RIGHT_EYE, _LEFT_EYE, _NOSE, _MOUTH, _RIGHT_EAR, _LEFT_EAR = range(6)
# On frontal faces (UTKFace val), the nose tip sits this far from the eye line towards the mouth,
# as a share of the eye-to-mouth distance; pitch is the departure from it.
_FRONTAL_NOSE_DEPTH = 0.52


def pose(keypoints: NDArray[np.floating]) -> tuple[float, float, float]:
    """(roll, yaw, pitch) in degrees from BlazeFace's six keypoints.

    Roll is the eye line's angle. Yaw and pitch come from where the nose tip lies in the face's
    own frame (the eye line turned level): sideways relative to the two ear tragions, which a
    turned head brings closer on one side, and down relative to the eyes and mouth. They are
    coarse geometric estimates from 2-D points (on clean val faces the middle 90 % of yaw spans
    -39 to +35 degrees, of pitch -10 to +14), enough to tell a profile or a face looking far up
    or down from a frontal one, not to measure a head's pose.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    eye_vec = kp[_LEFT_EYE] - kp[_RIGHT_EYE]
    roll = math.degrees(math.atan2(eye_vec[1], eye_vec[0]))
    c, s = math.cos(-math.radians(roll)), math.sin(-math.radians(roll))
    rot = np.array([[c, -s], [s, c]])
    p = (kp - kp[_NOSE]) @ rot.T  # nose at the origin, eyes level
    ear_r, ear_l = abs(p[_RIGHT_EAR, 0]), abs(p[_LEFT_EAR, 0])
    yaw = math.degrees(math.asin(float(np.clip((ear_l - ear_r) / max(ear_l + ear_r, 1e-6), -1, 1))))
    eye_y = (p[_RIGHT_EYE, 1] + p[_LEFT_EYE, 1]) / 2
    depth = (0.0 - eye_y) / max(p[_MOUTH, 1] - eye_y, 1e-6)
    pitch = math.degrees(math.asin(float(np.clip(2.0 * (depth - _FRONTAL_NOSE_DEPTH), -1, 1))))
    return roll, yaw, pitch


def sharpness(gray: NDArray[np.floating]) -> float:
    """Energy of the crop's Laplacian over the crop's variance.

    Measured on the aligned crop, whose scale is fixed, so one threshold fits faces of any size
    (a small face upscaled into the crop is blurred and counts as such); dividing by the variance
    keeps a dark or low-contrast face from counting as a blurred one."""
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=3)
    return float(lap.var() / max(float(gray.var()), 1e-6))


def quality_reasons(
    eye_distance: float,
    sharpness: float,
    yaw: float,
    pitch: float,
    brightness: float,
    contrast: float,
    score: float,
    t: QualityThresholds,
) -> tuple[Reason, ...]:
    """The reasons these measures make a face a poor basis for an estimate (empty: usable).
    Also what benchmarks/face_quality.py applies to stored measures to try other thresholds."""
    checks = (
        (eye_distance < t.min_eye_distance, Reason.TOO_SMALL),
        (sharpness < t.min_sharpness, Reason.BLURRED),
        (abs(yaw) > t.max_yaw or abs(pitch) > t.max_pitch, Reason.TURNED),
        (brightness < t.min_brightness, Reason.TOO_DARK),
        (brightness > t.max_brightness, Reason.OVEREXPOSED),
        (contrast < t.min_contrast, Reason.LOW_CONTRAST),
        (score < t.min_score, Reason.LOW_SCORE),
    )
    return tuple(reason for failed, reason in checks if failed)


def measure_quality(
    box: tuple[float, float, float, float],
    keypoints: NDArray[np.floating],
    score: float,
    crop: NDArray[np.uint8],
    thresholds: QualityThresholds,
) -> FaceQuality:
    kp = np.asarray(keypoints, dtype=np.float64)
    eye_distance = float(np.hypot(*(kp[_LEFT_EYE] - kp[_RIGHT_EYE])))
    roll, yaw, pitch = pose(kp)
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    brightness, contrast = float(gray.mean()), float(gray.std())
    sharp = sharpness(gray)
    reasons = quality_reasons(eye_distance, sharp, yaw, pitch, brightness, contrast, float(score), thresholds)
    return FaceQuality(
        eye_distance=eye_distance,
        box_short_side=float(min(box[2], box[3])),
        sharpness=sharp,
        roll=roll,
        yaw=yaw,
        pitch=pitch,
        brightness=brightness,
        contrast=contrast,
        score=float(score),
        reasons=reasons,
    )
