"""Alignment geometry and detection on real faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agelens.faces import DetectorPool, FaceDetector, FacePipeline, align_face, similarity_transform
from agelens.manifest import AlignmentSpec
from tests.conftest import face_rgb, faces_in_test_split, needs_dataset

SPEC = AlignmentSpec(crop_size=64)


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.radians(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def test_similarity_transform_recovers_a_known_transform() -> None:
    src = np.array([[30.0, 40.0], [70.0, 41.0], [50.0, 60.0], [50.0, 80.0]])
    m = similarity(23.0, 1.7, 12.0, -5.0)
    est = similarity_transform(src, apply(m, src))
    assert np.allclose(est, m, atol=1e-9)


def test_similarity_transform_has_no_reflection() -> None:
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0], [0.5, 1.5]])
    dst = src * np.array([-1.0, 1.0])  # a mirror image: best similarity must still be a rotation
    est = similarity_transform(src, dst)
    assert np.linalg.det(est[:, :2]) > 0


def textured(h: int = 200, w: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize(("angle", "scale"), [(15.0, 1.0), (-30.0, 2.5), (10.0, 6.0), (0.0, 0.8)])
def test_rotated_or_scaled_copy_gives_the_same_crop(angle: float, scale: float) -> None:
    img = textured()
    kps = np.zeros((6, 2), dtype=np.float32)
    kps[:4] = [[70, 75], [130, 75], [100, 108], [100, 140]]
    size = int(200 * scale * 1.8)
    m = similarity(angle, scale, 0, 0)
    # Centre the transformed image on the bigger canvas.
    m[:, 2] = np.array([size / 2, size / 2]) - apply(m, np.array([[100.0, 100.0]]))[0]
    moved = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_CUBIC)
    ref = align_face(img, kps, SPEC).astype(float)
    got = align_face(moved, apply(m, kps).astype(np.float32), SPEC).astype(float)
    # Resampling alone differs by ~4-7 grey levels here; a 2-pixel misalignment of this texture
    # differs by more than 20, so the bound separates "same crop" from "shifted crop".
    assert np.abs(ref - got).mean() < 8.0, "same face, same crop, whatever its pose in the photo"
    shifted = align_face(img, kps + 2.0, SPEC).astype(float)
    assert np.abs(ref - shifted).mean() > 12.0


@needs_dataset
def test_real_face_rotated_and_scaled_in_a_photo_gives_the_same_crop() -> None:
    pipe = FacePipeline(SPEC)
    for path, _age in faces_in_test_split(25, 40, 3):
        img = face_rgb(path)
        ref = pipe.largest(img)
        assert ref is not None
        m = similarity(12.0, 2.2, 0, 0)
        m[:, 2] = np.array([450.0, 350.0]) - apply(m, np.array([[100.0, 100.0]]))[0]
        photo = cv2.warpAffine(img, m, (900, 700), flags=cv2.INTER_CUBIC, borderValue=(200, 210, 220))
        got = pipe.largest(photo)
        assert got is not None
        # The box sits where we put the face.
        cx, cy = got.face.box[0] + got.face.box[2] / 2, got.face.box[1] + got.face.box[3] / 2
        assert abs(cx - 450) < 60 and abs(cy - 350) < 80
        # Compare the central region: outside UTKFace's 200 px frame the reference crop holds
        # replicated border pixels, while the photo has background there.
        a, b = ref.crop[12:52, 12:52].astype(float), got.crop[12:52, 12:52].astype(float)
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert corr > 0.9, f"{path.name}: crop correlation {corr:.3f}"


@needs_dataset
def test_tight_utkface_crops_are_detected() -> None:
    pipe = FacePipeline(SPEC)
    faces = faces_in_test_split(0, 100, 40)
    found = sum(pipe.largest(face_rgb(p)) is not None for p, _ in faces)
    assert found == len(faces)


def test_detector_works_without_matplotlib() -> None:
    """The service image leaves matplotlib out; mediapipe must still import and detect."""
    import subprocess
    import sys

    from tests.conftest import REPO, dataset_available, faces_in_test_split

    face = str(faces_in_test_split(30, 40, 1)[0][0]) if dataset_available() else ""
    script = f"""
import sys
sys.modules["matplotlib"] = None  # what an environment without matplotlib looks like
import numpy as np
from PIL import Image
from agelens.faces import FaceDetector
d = FaceDetector()
assert d.detect(np.full((200, 200, 3), 128, np.uint8)) == []
if {face!r}:
    assert len(d.detect(np.asarray(Image.open({face!r}).convert("RGB")))) == 1
try:
    import matplotlib
    raise SystemExit("matplotlib import should still fail")
except ImportError:
    print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@needs_dataset
def test_detector_pool_detects_concurrently_and_like_one_detector() -> None:
    from concurrent.futures import ThreadPoolExecutor

    rgbs = [face_rgb(p) for p, _ in faces_in_test_split(20, 60, 4)]
    single = FaceDetector()
    expected = [[f.box for f in single.detect(rgb)] for rgb in rgbs]
    pool = DetectorPool(size=2)
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda rgb: [f.box for f in pool.detect(rgb)], rgbs * 4))
    assert got == expected * 4
    assert all(len(boxes) == 1 for boxes in expected)
    pool.close()
    single.close()
