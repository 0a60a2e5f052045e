"""Face detection, alignment and normalisation: the one module that training and serving share.

`find_faces` turns decoded pixels into aligned faces. `agelens prepare` (the training crops),
`agelens evaluate` and the service's estimator all call it, with the alignment and detector
settings of the model's manifest, so training and serving cannot drift apart.

Detection is MediaPipe BlazeFace: the model files bundled in the mediapipe 0.10.21 wheel (no
download), run either by MediaPipe's own graph (`mp.solutions.face_detection`) or, by default,
directly on LiteRT with the graph's pre- and post-processing (`agelens.blazeface`). Alignment is a
least-squares similarity transform from four keypoints (eyes, nose tip, mouth centre) to the
manifest's canonical template.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from agelens.blazeface import BlazeFaceModel, RawDetection
from agelens.manifest import AlignmentSpec, DetectorSpec, Normalisation
from agelens.quality import FaceQuality, QualityThresholds, measure_quality

# MediaPipe's keypoint order for face_detection.
KEYPOINT_INDEX = {
    "right_eye": 0,
    "left_eye": 1,
    "nose_tip": 2,
    "mouth_center": 3,
    "right_ear_tragion": 4,
    "left_ear_tragion": 5,
}


def import_mediapipe() -> Any:
    """`import mediapipe`, also where matplotlib is not installed (the service image).

    mediapipe's package __init__ imports its drawing helpers, which import matplotlib.pyplot,
    although face detection never draws. matplotlib and what it pulls in (fontTools, kiwisolver,
    contourpy, ...) are ~80 MB of the image, so the service image leaves them out and this
    function lends mediapipe an empty stand-in for the duration of the import. Where matplotlib
    is installed (training, dev) nothing is faked.
    """
    if "mediapipe" in sys.modules:
        return sys.modules["mediapipe"]
    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        missing = object()
        saved = {name: sys.modules.get(name, missing) for name in ("matplotlib", "matplotlib.pyplot")}
        stub, pyplot = types.ModuleType("matplotlib"), types.ModuleType("matplotlib.pyplot")
        stub.pyplot = pyplot  # type: ignore[attr-defined]
        sys.modules.update({"matplotlib": stub, "matplotlib.pyplot": pyplot})
        try:
            import mediapipe
        finally:
            # Put back what was there, so `import matplotlib` elsewhere still fails honestly.
            for name, module in saved.items():
                if module is missing:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module  # type: ignore[assignment]
        return mediapipe
    import mediapipe

    return mediapipe


@dataclass
class DetectedFace:
    box: tuple[float, float, float, float]  # x, y, width, height in image pixels
    score: float
    keypoints: NDArray[np.float32] = field(repr=False)  # (6, 2) x, y in image pixels
    rank: float = -1.0  # what non-maximum suppression sorts by; the score unless set

    def __post_init__(self) -> None:
        if self.rank < 0:
            self.rank = self.score

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


@dataclass
class AlignedFace:
    face: DetectedFace
    crop: NDArray[np.uint8]  # (S, S, 3) RGB
    quality: FaceQuality


class _MediaPipeGraph:
    """BlazeFace through MediaPipe's own calculator graph (`mp.solutions.face_detection`).

    The reference the LiteRT backend is checked against (tests/test_faces.py). Slower, since
    every call crosses the graph's packet copies and thread hand-offs: 14.1 against 10.0 ms for
    both models on a 640x480 photo (benchmarks/results/e2e_latency.json).
    """

    def __init__(self, selection: int, min_score: float) -> None:
        try:
            mp = import_mediapipe()  # deferred: importing mediapipe costs ~1 s
        except ImportError as exc:
            # The service image keeps only mediapipe's BlazeFace files (docker/slim_venv.py).
            raise RuntimeError(
                "the 'mediapipe' detector backend needs the full mediapipe==0.10.21 package, which "
                "is not installed here; use the 'litert' backend (the same models)"
            ) from exc
        self._graph = mp.solutions.face_detection.FaceDetection(
            model_selection=selection, min_detection_confidence=min_score
        )
        self._min_score = min_score

    def detect(self, rgb: NDArray[np.uint8], pad: int = 0) -> list[RawDetection]:
        """Faces in `rgb` bordered by `pad` black pixels on every side, relative to the bordered
        image (the LiteRT backend's contract; the graph needs the bordered copy itself)."""
        if pad > 0:
            rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        result = self._graph.process(np.ascontiguousarray(rgb))
        out: list[RawDetection] = []
        for det in result.detections or []:
            score = float(det.score[0])
            # The graph ignores min_detection_confidence (its threshold is fixed inside), so the
            # caller's threshold is applied here, as the LiteRT backend does.
            if score < self._min_score:
                continue
            loc = det.location_data
            bb = loc.relative_bounding_box
            box = np.array([bb.xmin, bb.ymin, bb.xmin + bb.width, bb.ymin + bb.height], dtype=np.float32)
            kps = np.array([[k.x, k.y] for k in loc.relative_keypoints], dtype=np.float32)
            out.append(RawDetection(box, kps, score))
        return out

    def close(self) -> None:
        self._graph.close()


DETECTOR_BACKENDS = {"litert": BlazeFaceModel, "mediapipe": _MediaPipeGraph}


class FaceDetector:
    """MediaPipe BlazeFace, short- and/or full-range. Not thread-safe per model: each is guarded
    by a lock (use DetectorPool for parallel detection)."""

    def __init__(self, config: DetectorSpec | None = None) -> None:
        self.config = config or DetectorSpec()
        if self.config.backend not in DETECTOR_BACKENDS:
            raise ValueError(f"unknown detector backend {self.config.backend!r}")
        self._models: dict[int, BlazeFaceModel | _MediaPipeGraph] = {}
        self._locks: dict[int, threading.Lock] = {0: threading.Lock(), 1: threading.Lock()}

    def _model(self, selection: int) -> BlazeFaceModel | _MediaPipeGraph:
        if selection not in self._models:
            backend = DETECTOR_BACKENDS[self.config.backend]
            self._models[selection] = backend(selection, self.config.min_score)
        return self._models[selection]

    def _run(self, rgb: NDArray[np.uint8], selection: int, pad: float) -> list[DetectedFace]:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.config.max_side / max(h, w))
        small = rgb
        if scale < 1.0:
            small = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        sh, sw = small.shape[:2]
        # Constant (black) border: a reflected border would mirror the face and create twins.
        p = round(pad * max(sh, sw))
        ph, pw = sh + 2 * p, sw + 2 * p
        with self._locks[selection]:
            found = self._model(selection).detect(small, pad=p)
        faces: list[DetectedFace] = []
        size = np.array([pw, ph], dtype=np.float32)
        for det in found:
            kps = (det.keypoints * size - p) / scale
            (x0, y0), (x1, y1) = (det.box.reshape(2, 2) * size - p) / scale
            x0, y0 = max(0.0, float(x0)), max(0.0, float(y0))
            x1, y1 = min(float(w), float(x1)), min(float(h), float(y1))
            if x1 <= x0 or y1 <= y0:
                continue
            faces.append(DetectedFace((x0, y0, x1 - x0, y1 - y0), det.score, kps.astype(np.float32)))
        return faces

    def detect(self, rgb: NDArray[np.uint8]) -> list[DetectedFace]:
        cfg = self.config
        if cfg.model not in ("short", "full", "auto"):
            raise ValueError(f"unknown detector model {cfg.model!r}")
        candidates: list[DetectedFace] = []
        if cfg.model in ("short", "auto"):
            for f in self._run(rgb, 0, cfg.pad_fraction):
                # Short-range keypoints are the more precise on faces that fill the frame: a small
                # bonus lets them win ties, while a clearly better full-range detection still wins.
                candidates.append(DetectedFace(f.box, f.score, f.keypoints, rank=f.score + cfg.short_bonus))
        if cfg.model in ("full", "auto"):
            candidates += self._run(rgb, 1, 0.0)
            candidates += self._run_tiles(rgb)
        faces = _nms(candidates, cfg.nms_iou)
        faces.sort(key=lambda f: (f.box[1], f.box[0]))
        return faces

    def _run_tiles(self, rgb: NDArray[np.uint8]) -> list[DetectedFace]:
        """Detection on three overlapping halves along the long side of a large image.

        BlazeFace sees the whole image at 192 px, so in a wide group photo a 140 px face shrinks
        to ~24 px and can be missed; each half doubles that, and the overlap means every face lies
        whole inside some tile. Only images whose long side exceeds `tile_above` pay for it.
        """
        h, w = rgb.shape[:2]
        if max(h, w) <= self.config.tile_above:
            return []
        out: list[DetectedFace] = []
        span = 0.5  # each tile covers half the long side; three tiles overlap by half a tile
        for start in (0.0, 0.25, 0.5):
            if w >= h:
                x0, x1 = round(start * w), round((start + span) * w)
                tile, off = rgb[:, x0:x1], np.array([x0, 0], dtype=np.float32)
            else:
                y0, y1 = round(start * h), round((start + span) * h)
                tile, off = rgb[y0:y1], np.array([0, y0], dtype=np.float32)
            tile = np.ascontiguousarray(tile)
            # Both models: in a tile, a mid-sized face is large enough for the short-range model,
            # which (padded) also copes with faces cut at the forehead or chin.
            found = [(f, f.score) for f in self._run(tile, 1, 0.0)]
            found += [
                (f, f.score + self.config.short_bonus) for f in self._run(tile, 0, self.config.pad_fraction)
            ]
            for f, rank in found:
                box = (f.box[0] + float(off[0]), f.box[1] + float(off[1]), f.box[2], f.box[3])
                out.append(DetectedFace(box, f.score, f.keypoints + off, rank=rank))
        return out

    def close(self) -> None:
        for model in self._models.values():
            model.close()  # type: ignore[attr-defined]
        self._models.clear()


class DetectorPool:
    """Several FaceDetectors behind one `detect`, so requests in different threads detect at once.

    A detector handles one image at a time, but both backends release the GIL while the model
    runs, so with N detectors the threads of one process can detect on N cores at once. Measured
    on 2 cores (benchmarks/results/load.json): two workers with one detector each reach the
    highest throughput, since the Python around detection then runs in parallel too.
    """

    def __init__(self, config: DetectorSpec | None = None, size: int = 1) -> None:
        self.config = config or DetectorSpec()
        self._idle: queue.SimpleQueue[FaceDetector] = queue.SimpleQueue()
        self._all = [FaceDetector(self.config) for _ in range(max(1, size))]
        for d in self._all:
            self._idle.put(d)

    def detect(self, rgb: NDArray[np.uint8]) -> list[DetectedFace]:
        detector = self._idle.get()  # blocks while every detector is busy: bounded by the pool size
        try:
            return detector.detect(rgb)
        finally:
            self._idle.put(detector)

    def warm_up(self) -> None:
        """Run every model of every detector once, so no user request pays for their start."""
        blank = np.full((256, 256, 3), 128, dtype=np.uint8)
        for d in self._all:
            d.detect(blank)

    def close(self) -> None:
        for d in self._all:
            d.close()


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _nms(faces: list[DetectedFace], iou: float) -> list[DetectedFace]:
    kept: list[DetectedFace] = []
    for face in sorted(faces, key=lambda f: -f.rank):
        if all(_iou(face.box, k.box) <= iou for k in kept):
            kept.append(face)
    return kept


def similarity_transform(src: NDArray[np.floating], dst: NDArray[np.floating]) -> NDArray[np.float64]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Returns a 2x3 matrix. In 2-D the least-squares problem is linear in (a, b) of the matrix
    [[a, -b], [b, a]], so it has a closed form: the same answer as Umeyama's SVD method (which
    excludes reflections too, tests/test_faces.py), without an SVD call per face, which stood
    out in the py-spy profile of a server worker (benchmarks/profile_server.py). Written out
    because cv2.estimateAffinePartial2D is a robust (RANSAC/LMedS) estimator: with four points
    it may ignore one, which makes crops jump.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var = float((sc**2).sum())
    a = float((sc * dc).sum()) / var
    b = float((sc[:, 0] * dc[:, 1] - sc[:, 1] * dc[:, 0]).sum()) / var
    lin = np.array([[a, -b], [b, a]])
    return np.hstack([lin, (mu_d - lin @ mu_s)[:, None]])


def align_face(
    rgb: NDArray[np.uint8], keypoints: NDArray[np.floating], spec: AlignmentSpec
) -> NDArray[np.uint8]:
    """Warp the face so its keypoints land on the template; returns (S, S, 3) uint8."""
    idx = [KEYPOINT_INDEX[name] for name in spec.keypoints]
    src = np.asarray(keypoints, dtype=np.float64)[idx]
    dst = np.asarray(spec.template_pixels(), dtype=np.float64)
    m = similarity_transform(src, dst)
    scale = float(np.hypot(m[0, 0], m[0, 1]))
    img = rgb
    if scale < 0.5:
        # Shrinking by more than 2x with bilinear sampling aliases. Pre-shrink only the region
        # the crop reads, with area averaging, so a 1000 px face and a 120 px face give the same
        # crop; this keeps phone photos on the training distribution.
        inv = cv2.invertAffineTransform(m)
        s = spec.crop_size
        corners = np.array([[0, 0, 1], [s, 0, 1], [0, s, 1], [s, s, 1]], dtype=np.float64) @ inv.T
        h, w = rgb.shape[:2]
        x0 = int(max(0, np.floor(corners[:, 0].min()) - 2))
        y0 = int(max(0, np.floor(corners[:, 1].min()) - 2))
        x1 = int(min(w, np.ceil(corners[:, 0].max()) + 2))
        y1 = int(min(h, np.ceil(corners[:, 1].max()) + 2))
        if x1 > x0 and y1 > y0:
            factor = scale * 2.0
            roi = rgb[y0:y1, x0:x1]
            nw, nh = max(1, round(roi.shape[1] * factor)), max(1, round(roi.shape[0] * factor))
            img = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
            fx, fy = nw / roi.shape[1], nh / roi.shape[0]
            # Map from the shrunk ROI's coordinates: p_roi = (p - (x0, y0)) * f
            shift = np.array([[1 / fx, 0, x0], [0, 1 / fy, y0], [0, 0, 1]], dtype=np.float64)
            m = m @ shift
    return cv2.warpAffine(
        img,
        m,
        (spec.crop_size, spec.crop_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def normalise(crops: NDArray[np.uint8], norm: Normalisation) -> NDArray[np.float32]:
    """(N, S, S, 3) uint8 RGB -> (N, 3, S, S) float32, as the manifest says."""
    x = np.asarray(crops, dtype=np.float32) * (1.0 / 255.0)
    mean = np.asarray(norm.mean, dtype=np.float32)
    std = np.asarray(norm.std, dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@dataclass
class FoundFaces:
    """What `find_faces` found in one image: the kept faces, aligned, in reading order."""

    faces: list[AlignedFace]
    detected: int  # faces the detector found, kept or not
    detect_ms: float
    align_ms: float
    quality_ms: float = 0.0

    @property
    def truncated(self) -> bool:
        return self.detected > len(self.faces)


def find_faces(
    rgb: NDArray[np.uint8],
    spec: AlignmentSpec,
    detector: FaceDetector | DetectorPool,
    max_faces: int | None = None,
    quality: QualityThresholds | None = None,
) -> FoundFaces:
    """Detect every face in decoded RGB pixels, align each to the manifest's template, and
    measure how good a basis for an estimate it is (`agelens.quality`, against `quality`'s
    thresholds, the defaults when None).

    Where more than `max_faces` are found, the largest are kept (in a photo, the subjects; in a
    dataset chip, the labelled face), and the kept ones are returned in reading order.
    """
    thresholds = quality or QualityThresholds()
    t0 = time.perf_counter()
    detections = detector.detect(rgb)
    t1 = time.perf_counter()
    kept = detections
    if max_faces is not None and len(detections) > max_faces:
        largest = {id(f) for f in sorted(detections, key=lambda f: -f.area)[:max_faces]}
        kept = [f for f in detections if id(f) in largest]
    crops = [align_face(rgb, f.keypoints, spec) for f in kept]
    t2 = time.perf_counter()
    faces = [
        AlignedFace(f, crop, measure_quality(f.box, f.keypoints, f.score, crop, thresholds))
        for f, crop in zip(kept, crops, strict=True)
    ]
    t3 = time.perf_counter()
    return FoundFaces(faces, len(detections), (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
