"""Per-face quality (agelens.quality through agelens.faces.find_faces) on real faces: a sharp
chip is usable, and the same chip blurred, shrunk in a photo, darkened, over-exposed or flattened
is flagged with the reason its measured value gives."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from agelens.faces import FaceDetector, find_faces
from agelens.manifest import AlignmentSpec, DetectorSpec
from agelens.quality import FaceQuality, QualityThresholds, Reason, measure_quality, pose
from tests.conftest import face_rgb, faces_in_test_split, needs_dataset

SPEC = AlignmentSpec()
THRESHOLDS = QualityThresholds()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(DetectorSpec(model="auto"))


def expected_reasons(q: FaceQuality, t: QualityThresholds) -> set[str]:
    """What the measured values say, written out independently of measure_quality."""
    out = set()
    if q.eye_distance < t.min_eye_distance:
        out.add("too_small")
    if q.sharpness < t.min_sharpness:
        out.add("blurred")
    if abs(q.yaw) > t.max_yaw or abs(q.pitch) > t.max_pitch:
        out.add("turned")
    if q.brightness < t.min_brightness:
        out.add("too_dark")
    if q.brightness > t.max_brightness:
        out.add("overexposed")
    if q.contrast < t.min_contrast:
        out.add("low_contrast")
    if q.score < t.min_score:
        out.add("low_score")
    return out


def quality_of(rgb: np.ndarray, detector: FaceDetector) -> FaceQuality:
    found = find_faces(np.ascontiguousarray(rgb), SPEC, detector, max_faces=1)
    assert found.faces, "no face found"
    q = found.faces[0].quality
    assert {str(r) for r in q.reasons} == expected_reasons(q, THRESHOLDS)
    return q


def in_photo(rgb: np.ndarray, width: int, side: int = 160) -> np.ndarray:
    """The chip shrunk to `width` px, centred in a grey `side` x `side` photo."""
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
    canvas = np.full((side, side, 3), 128, dtype=np.uint8)
    y, x = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    return canvas


@pytest.fixture(scope="module")
def chips() -> list[np.ndarray]:
    return [face_rgb(p) for p, _ in faces_in_test_split(20, 50, 4)]


@needs_dataset
def test_sharp_chips_are_usable(chips: list[np.ndarray], detector: FaceDetector) -> None:
    for rgb in chips:
        q = quality_of(rgb, detector)
        assert q.usable, q
        assert q.eye_distance > 40 and q.sharpness > THRESHOLDS.min_sharpness


@needs_dataset
def test_hard_blur_is_flagged_blurred(chips: list[np.ndarray], detector: FaceDetector) -> None:
    for rgb in chips:
        sharp = quality_of(rgb, detector)
        q = quality_of(cv2.GaussianBlur(rgb, (0, 0), 6), detector)
        assert Reason.BLURRED in q.reasons, q
        assert q.sharpness < sharp.sharpness / 4


@needs_dataset
def test_face_of_about_30_px_in_a_photo_is_too_small(chips: list[np.ndarray], detector: FaceDetector) -> None:
    flagged = 0
    for rgb in chips:
        found = find_faces(in_photo(rgb, 30), SPEC, detector, max_faces=1)
        if not found.faces:
            continue  # too small to be found at all: nothing to flag
        q = found.faces[0].quality
        assert q.eye_distance < THRESHOLDS.min_eye_distance and q.box_short_side < 36, q
        assert {str(r) for r in q.reasons} == expected_reasons(q, THRESHOLDS)
        assert Reason.TOO_SMALL in q.reasons
        flagged += 1
    assert flagged >= 2


@needs_dataset
def test_darkened_and_overexposed_faces_are_flagged(chips: list[np.ndarray], detector: FaceDetector) -> None:
    for rgb in chips:
        dark = quality_of((rgb.astype(np.float32) * 0.12).astype(np.uint8), detector)
        assert Reason.TOO_DARK in dark.reasons and dark.brightness < THRESHOLDS.min_brightness
        bright = quality_of((255 - (255 - rgb.astype(np.float32)) * 0.12).astype(np.uint8), detector)
        assert Reason.OVEREXPOSED in bright.reasons and bright.brightness > THRESHOLDS.max_brightness


@needs_dataset
def test_thresholds_move_the_flags(chips: list[np.ndarray], detector: FaceDetector) -> None:
    rgb = chips[0]
    found = find_faces(rgb, SPEC, detector, max_faces=1)
    f = found.faces[0]
    strict = QualityThresholds(min_eye_distance=f.quality.eye_distance + 1, min_score=0.999)
    q = measure_quality(f.face.box, f.face.keypoints, f.face.score, f.crop, strict)
    assert {str(r) for r in q.reasons} == {"too_small", "low_score"} == expected_reasons(q, strict)


def test_pose_of_synthetic_keypoints() -> None:
    # A frontal face: eyes level, nose centred between the ears, nose at the frontal depth.
    eyes_y, mouth_y = 100.0, 160.0
    nose_y = eyes_y + 0.52 * (mouth_y - eyes_y)
    frontal = np.array(
        [[80, eyes_y], [120, eyes_y], [100, nose_y], [100, mouth_y], [50, 110], [150, 110]], dtype=np.float32
    )
    roll, yaw, pitch = pose(frontal)
    assert abs(roll) < 1e-4 and abs(yaw) < 1e-4 and abs(pitch) < 1e-4
    # The nose moved towards the left ear: turned.
    turned = frontal.copy()
    turned[2, 0] = 135
    assert pose(turned)[1] < -30  # towards the image right: negative
    # Rotating every point leaves yaw and pitch alone and shows up as roll.
    a = math.radians(20)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    r_roll, r_yaw, r_pitch = pose(frontal @ rot.T)
    assert abs(r_roll - 20) < 1e-4 and abs(r_yaw) < 1e-4 and abs(r_pitch) < 1e-4


def test_measures_of_a_flat_grey_crop() -> None:
    crop = np.full((64, 64, 3), 10, dtype=np.uint8)
    kps = np.array([[20, 20], [44, 20], [32, 32], [32, 44], [5, 24], [59, 24]], dtype=np.float32)
    q = measure_quality((0, 0, 64, 64), kps, 0.9, crop, THRESHOLDS)
    assert q.brightness == pytest.approx(10) and q.contrast == pytest.approx(0)
    assert q.eye_distance == pytest.approx(24)
    assert {str(r) for r in q.reasons} == {"blurred", "too_dark", "low_contrast"}
