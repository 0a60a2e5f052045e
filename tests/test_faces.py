"""Alignment geometry and detection on real faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agelens.blazeface import FULL_RANGE, SHORT_RANGE, ssd_anchors, weighted_nms
from agelens.faces import (
    AlignedFace,
    DetectorPool,
    FaceDetector,
    align_face,
    find_faces,
    similarity_transform,
)
from agelens.manifest import AlignmentSpec, DetectorSpec
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


@pytest.mark.parametrize("margin", [0.2, 0.0, -0.1])
def test_margin_scales_the_template_about_the_crop_centre(margin: float) -> None:
    # A margin m maps the unit face box's [-m, 1 + m] onto the crop: a positive one shows more
    # around the face, a negative one zooms in on it. Keypoints keep their place relative to the
    # crop's centre, scaled by 1 / (1 + 2m).
    spec = AlignmentSpec(crop_size=64, margin=margin)
    got = np.array(spec.template_pixels())
    unit = np.array(spec.template)
    want = 32.0 + (unit - 0.5) * 64.0 / (1.0 + 2.0 * margin)
    assert np.allclose(got, want)


def test_margin_below_the_bound_is_refused() -> None:
    with pytest.raises(ValueError):
        AlignmentSpec(crop_size=64, margin=-0.3)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Reference: Umeyama's SVD solution with the reflection excluded."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    u, s, vt = np.linalg.svd(dc.T @ sc / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / ((sc**2).sum() / len(src))
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def test_similarity_transform_is_the_least_squares_solution_on_noisy_points() -> None:
    # The closed form must match Umeyama's SVD method on keypoints with detector-like noise,
    # and on hard cases (mirror images), so crops are exactly those the shipped model trained on.
    rng = np.random.default_rng(0)
    template = np.array([[19.6, 19.7], [44.4, 19.7], [32.0, 34.0], [32.0, 46.6]])
    for i in range(200):
        src = (
            rng.uniform(0, 500, (4, 2)) if i % 2 else template * rng.uniform(1, 8) + rng.normal(0, 3, (4, 2))
        )
        dst = template if i % 3 else src * np.array([-1.0, 1.0])
        assert np.allclose(similarity_transform(src, dst), umeyama(src, dst), atol=1e-7)


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


def largest(rgb: np.ndarray, detector: FaceDetector) -> AlignedFace | None:
    found = find_faces(rgb, SPEC, detector, max_faces=1)
    return found.faces[0] if found.faces else None


@needs_dataset
def test_real_face_rotated_and_scaled_in_a_photo_gives_the_same_crop() -> None:
    detector = FaceDetector()
    for path, _age in faces_in_test_split(25, 40, 3):
        img = face_rgb(path)
        ref = largest(img, detector)
        assert ref is not None
        m = similarity(12.0, 2.2, 0, 0)
        m[:, 2] = np.array([450.0, 350.0]) - apply(m, np.array([[100.0, 100.0]]))[0]
        photo = cv2.warpAffine(img, m, (900, 700), flags=cv2.INTER_CUBIC, borderValue=(200, 210, 220))
        got = largest(photo, detector)
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
    detector = FaceDetector()
    faces = faces_in_test_split(0, 100, 40)
    found = sum(largest(face_rgb(p), detector) is not None for p, _ in faces)
    assert found == len(faces)


@pytest.mark.parametrize("backend", ["litert", "mediapipe"])
def test_detector_works_without_matplotlib(backend: str) -> None:
    """The service image leaves matplotlib out; both backends must still load and detect."""
    import subprocess
    import sys

    from tests.conftest import REPO, dataset_available, faces_in_test_split

    face = str(faces_in_test_split(30, 40, 1)[0][0]) if dataset_available() else ""
    script = f"""
import sys
sys.modules["matplotlib"] = None  # what an environment without matplotlib looks like
import numpy as np
from PIL import Image
from agelens.faces import DetectorSpec, FaceDetector
d = FaceDetector(DetectorSpec(backend={backend!r}))
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


def test_ssd_anchors_match_mediapipe_layout() -> None:
    # Short range: 16x16 cells x 2 anchors (stride 8) then 8x8 x 6 (three stride-16 layers, each
    # with the interpolated anchor); full range: 48x48 x 1.
    short, full = ssd_anchors(SHORT_RANGE), ssd_anchors(FULL_RANGE)
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    assert np.allclose(short[0], short[1]) and np.allclose(short[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(short[2], [1.5 / 16, 0.5 / 16])  # x runs fastest
    assert np.allclose(short[512:518], [0.5 / 8, 0.5 / 8])  # six anchors share the first 8x8 cell
    assert np.allclose(full[-1], [47.5 / 48, 47.5 / 48])


def test_weighted_nms_averages_overlaps_by_score_and_keeps_the_rest() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], dtype=np.float32)
    kps = np.zeros((3, 6, 2), dtype=np.float32)
    kps[1] += 4.0
    scores = np.array([0.6, 0.9, 0.7], dtype=np.float32)
    out = weighted_nms(boxes, kps, scores, iou=0.3)
    assert [round(d.score, 3) for d in out] == [0.9, 0.7]
    # Weighted by score: x0 = (0.9 * 1 + 0.6 * 0) / 1.5 = 0.6; keypoints (0.9 * 4) / 1.5 = 2.4.
    assert np.allclose(out[0].box, [0.6, 0, 10.6, 10]) and np.allclose(out[0].keypoints, 2.4)
    assert np.allclose(out[1].box, boxes[2])


def _photo_with_faces(paths: list, size: tuple[int, int], scale: float) -> np.ndarray:
    """The faces pasted side by side on a textured background: a multi-face photo."""
    w, h = size
    canvas = textured(h, w, seed=3)
    for i, path in enumerate(paths):
        face = cv2.resize(face_rgb(path), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        fh, fw = face.shape[:2]
        x = int((i + 0.5) * w / len(paths) - fw / 2)
        y = (h - fh) // 2
        canvas[y : y + fh, x : x + fw] = face
    return canvas


@needs_dataset
@pytest.mark.parametrize("selection", [0, 1])
def test_litert_blazeface_reproduces_the_mediapipe_graph(selection: int) -> None:
    """Same model files, MediaPipe's pre/post-processing re-done: the detections must agree to
    numerical noise, so crops (and ages) are the same whichever backend made them."""
    from agelens.faces import DETECTOR_BACKENDS

    ours = DETECTOR_BACKENDS["litert"](selection, 0.5)
    ref = DETECTOR_BACKENDS["mediapipe"](selection, 0.5)
    images = [face_rgb(p) for p, _ in faces_in_test_split(0, 100, 12)]
    images = [cv2.copyMakeBorder(im, 50, 50, 50, 50, cv2.BORDER_CONSTANT, value=0) for im in images]
    faces = [p for p, _ in faces_in_test_split(5, 80, 6)]
    images += [_photo_with_faces(faces[:3], (900, 500), 0.6), _photo_with_faces(faces[3:], (640, 480), 0.4)]
    compared = 0
    for rgb in images:
        a = sorted(ours.detect(rgb), key=lambda d: -d.score)
        b = sorted(ref.detect(rgb), key=lambda d: -d.score)
        assert len(a) == len(b)
        h, w = rgb.shape[:2]
        for da, db in zip(a, b, strict=True):
            assert abs(da.score - db.score) < 1e-4
            assert np.abs((da.keypoints - db.keypoints) * [w, h]).max() < 0.05  # pixels
            assert np.abs((da.box - db.box).reshape(2, 2) * [w, h]).max() < 0.05
            compared += 1
    assert compared >= 10
    ref.close()


@needs_dataset
@pytest.mark.parametrize("selection", [0, 1])
def test_litert_border_from_the_warp_equals_a_padded_copy(selection: int) -> None:
    """`detect(rgb, pad=p)` samples the black border inside the letterbox warp instead of
    copying the photo into a bordered one: the detections must be the copy's, bit for bit."""
    from agelens.faces import DETECTOR_BACKENDS

    model = DETECTOR_BACKENDS["litert"](selection, 0.5)
    faces = [p for p, _ in faces_in_test_split(5, 80, 6)]
    images = [face_rgb(p) for p, _ in faces_in_test_split(0, 100, 6)]
    images += [_photo_with_faces(faces[:3], (900, 500), 0.6), _photo_with_faces(faces[3:], (640, 480), 0.4)]
    found = 0
    for rgb in images:
        for pad in (0, 17, round(0.25 * max(rgb.shape[:2]))):
            copy = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
            a, b = model.detect(rgb, pad=pad), model.detect(copy)
            assert len(a) == len(b)
            for da, db in zip(a, b, strict=True):
                assert da.score == pytest.approx(db.score, abs=1e-6)
                assert np.allclose(da.keypoints, db.keypoints, atol=1e-6)
                assert np.allclose(da.box, db.box, atol=1e-6)
                found += 1
    assert found >= 10


@needs_dataset
def test_min_score_drops_weaker_faces() -> None:
    rgb = face_rgb(faces_in_test_split(30, 40, 1)[0][0])
    found = FaceDetector(DetectorSpec(model="short")).detect(rgb)
    assert len(found) == 1
    stricter = FaceDetector(DetectorSpec(model="short", min_score=min(0.999, found[0].score + 0.01)))
    assert stricter.detect(rgb) == []


def test_find_faces_keeps_the_largest_in_reading_order() -> None:
    """The one rule for which faces are kept: the largest, returned in reading order."""
    from agelens.faces import DetectedFace

    class Fixed:
        def __init__(self, faces: list[DetectedFace]) -> None:
            self.faces = faces

        def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
            return self.faces

    kps = np.tile(np.array([[30.0, 30.0]], dtype=np.float32), (6, 1))
    kps[1, 0], kps[3, 1] = 50.0, 55.0  # eyes apart, mouth below: a usable similarity
    faces = [
        DetectedFace((0, 0, 10, 10), 0.9, kps),  # small, first in reading order
        DetectedFace((100, 0, 40, 40), 0.6, kps),  # largest
        DetectedFace((200, 0, 20, 20), 0.99, kps),  # middle size, most confident
    ]
    rgb = np.zeros((300, 300, 3), dtype=np.uint8)
    found = find_faces(rgb, SPEC, Fixed(faces), max_faces=2)  # type: ignore[arg-type]
    assert [f.face.box for f in found.faces] == [faces[1].box, faces[2].box]
    assert found.detected == 3 and found.truncated
    assert all(f.crop.shape == (64, 64, 3) for f in found.faces)
    one = find_faces(rgb, SPEC, Fixed(faces), max_faces=1)  # type: ignore[arg-type]
    assert [f.face.box for f in one.faces] == [faces[1].box]
    every = find_faces(rgb, SPEC, Fixed(faces))  # type: ignore[arg-type]
    assert len(every.faces) == 3 and not every.truncated
