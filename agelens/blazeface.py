"""MediaPipe's BlazeFace models run directly on the LiteRT (TFLite) interpreter.

MediaPipe's `solutions.face_detection` wraps two small TFLite models in a calculator graph,
whose packet copies and thread hand-offs cost on top of the models: both passes the service
makes on a 640x480 photo take 14.1 ms through the graph and 10.0 ms here
(benchmarks/results/e2e_latency.json). This module runs the *same* .tflite files, read from the
installed mediapipe 0.10.21 wheel (nothing is downloaded), with the same pre- and post-processing
as MediaPipe's calculators, so the detections match the graph's (tests/test_faces.py measures the
agreement on real faces):

* ImageToTensorCalculator: the whole image, letterboxed to a square (zero border), warped with
  bilinear sampling to the model's input and scaled to [-1, 1];
* SsdAnchorsCalculator: the anchor grid of each model (options below);
* TensorsToDetectionsCalculator: box and keypoint offsets decoded against the anchors, sigmoid
  scores, threshold;
* NonMaxSuppressionCalculator: *weighted* suppression at IoU 0.3 (overlapping detections are
  averaged, weighted by score, which steadies the keypoints);
* DetectionLetterboxRemovalCalculator: coordinates back to the unpadded image.

The interpreter is not thread-safe: one `BlazeFaceModel` serves one thread at a time (the caller
holds a lock or a pool). Its `invoke` releases the GIL, so a pool of them detects on all cores.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class BlazeFaceSpec:
    """One BlazeFace variant: its file and the calculator options MediaPipe's graph gives it."""

    filename: str
    input_size: int
    strides: tuple[int, ...]
    # SsdAnchorsCalculator: an extra anchor per cell at the interpolated scale (short range only).
    interpolated_scale_aspect_ratio: float
    # TensorsToDetectionsCalculator's threshold in MediaPipe's graph for this model. The graph
    # fixes it (the Python solution's min_detection_confidence does not reach it in 0.10.21:
    # measured, see tests/test_faces.py), and weighted NMS averages every candidate above it, so
    # it is part of what the detections are. A caller's own threshold is applied after NMS.
    candidate_score: float
    min_scale: float = 0.1484375
    max_scale: float = 0.75


SHORT_RANGE = BlazeFaceSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 1.0, 0.5)
FULL_RANGE = BlazeFaceSpec("face_detection_full_range_sparse.tflite", 192, (4,), 0.0, 0.6)
SPECS = {0: SHORT_RANGE, 1: FULL_RANGE}  # MediaPipe's model_selection numbering

NUM_KEYPOINTS = 6
NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold for face detection
SCORE_CLIP = 100.0


def mediapipe_model_dir() -> Path:
    """Where the installed mediapipe wheel keeps its face-detection models (without importing it:
    `import mediapipe` costs ~1 s and pulls in its whole graph runtime)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mediapipe==0.10.21 is not installed: it provides the BlazeFace model files")
    return Path(next(iter(spec.submodule_search_locations))) / "modules" / "face_detection"


def ssd_anchors(spec: BlazeFaceSpec) -> NDArray[np.float32]:
    """(N, 2) anchor centres in [0, 1], in the order of the model's outputs.

    MediaPipe's face models use fixed-size anchors (width = height = 1), so only the centres
    matter. Consecutive layers with the same stride share one feature map; each contributes one
    anchor per cell for its aspect ratio (1.0) plus, where `interpolated_scale_aspect_ratio` is
    set, one more at the interpolated scale.
    """
    centres: list[NDArray[np.float32]] = []
    layer = 0
    n_layers = len(spec.strides)
    while layer < n_layers:
        stride = spec.strides[layer]
        per_cell = 0
        while layer < n_layers and spec.strides[layer] == stride:
            per_cell += 1 + (1 if spec.interpolated_scale_aspect_ratio > 0 else 0)
            layer += 1
        cells = int(np.ceil(spec.input_size / stride))
        # Anchor offset 0.5: the centre of each cell.
        coords = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        yy, xx = np.meshgrid(coords, coords, indexing="ij")
        grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


@dataclass
class RawDetection:
    """A detection in coordinates relative to the image given to `detect` (0..1)."""

    box: NDArray[np.float32]  # xmin, ymin, xmax, ymax
    keypoints: NDArray[np.float32]  # (6, 2)
    score: float


def _iou_one_to_many(box: NDArray[np.float32], boxes: NDArray[np.float32]) -> NDArray[np.float32]:
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def weighted_nms(
    boxes: NDArray[np.float32], keypoints: NDArray[np.float32], scores: NDArray[np.float32], iou: float
) -> list[RawDetection]:
    """MediaPipe's WEIGHTED non-maximum suppression.

    Take the best remaining detection and every remaining one that overlaps it by more than
    `iou`; output their score-weighted mean box and keypoints with the best one's score.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.arange(len(scores))
    out: list[RawDetection] = []
    while remaining.size:
        top = remaining[0]
        overlap = _iou_one_to_many(boxes[top], boxes[remaining])
        group = remaining[overlap > iou]
        if group.size == 0:  # degenerate (zero-area) box: it still stands for itself
            group = remaining[:1]
        w = scores[group][:, None]
        total = float(w.sum())
        box = (boxes[group] * w).sum(0) / total
        kps = (keypoints[group] * w[:, :, None]).sum(0) / total
        out.append(RawDetection(box.astype(np.float32), kps.astype(np.float32), float(scores[top])))
        remaining = remaining[(overlap <= iou) & (remaining != top)]
    return out


class BlazeFaceModel:
    """One BlazeFace variant on one LiteRT interpreter (one thread at a time)."""

    def __init__(self, selection: int, min_score: float = 0.0, model_dir: Path | None = None) -> None:
        # Imported here so that importing agelens.faces stays cheap for code that never detects.
        from ai_edge_litert.interpreter import Interpreter

        self.spec = SPECS[selection]
        self.min_score = min_score
        path = (model_dir or mediapipe_model_dir()) / self.spec.filename
        if not path.is_file():
            raise RuntimeError(f"BlazeFace model missing: {path}")
        # One thread: the service parallelises across requests (workers, detector pools), and
        # a second thread per 128 px inference costs more in hand-off than it saves.
        self._interp = Interpreter(model_path=str(path), num_threads=1)
        self._interp.allocate_tensors()
        self._input = self._interp.get_input_details()[0]["index"]
        # The regressor output has 16 values per anchor, the classifier 1; names differ per file.
        by_width = {int(d["shape"][-1]): d["index"] for d in self._interp.get_output_details()}
        self._regressors, self._scores = by_width[4 + 2 * NUM_KEYPOINTS], by_width[1]
        self.anchors = ssd_anchors(self.spec)

    def _tensor(
        self, rgb: NDArray[np.uint8], pad: int = 0
    ) -> tuple[NDArray[np.float32], float, float, float]:
        """Letterbox the image, with a black border of `pad` pixels on every side, into the
        model's square input, as ImageToTensorCalculator does.

        The border is sampled by the warp itself (a zero border reads the same values as a
        padded copy, even under bilinear interpolation), so no padded copy of the photo is made:
        that copy stood out in the py-spy profile of a worker using the short-range model.
        Returns the input tensor and the letterbox's (side, left, top) in pixels of the padded
        image, so tensor coordinates map back with x_padded = x_tensor * side - left.
        """
        h, w = rgb.shape[0] + 2 * pad, rgb.shape[1] + 2 * pad
        size = self.spec.input_size
        side = float(max(h, w))
        left, top = (side - w) / 2.0, (side - h) / 2.0
        s = size / side
        m = np.array([[s, 0.0, (left + pad) * s], [0.0, s, (top + pad) * s]], dtype=np.float64)
        # Bilinear warp with a zero border, like MediaPipe's OpenCV image-to-tensor converter
        # (no area averaging: the model was trained on what MediaPipe feeds it).
        square = cv2.warpAffine(
            rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        x = square.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
        return x[None], side, left, top

    def detect(self, rgb: NDArray[np.uint8], pad: int = 0) -> list[RawDetection]:
        """Faces in an RGB uint8 image bordered by `pad` black pixels on every side; boxes and
        keypoints relative to the bordered image's width and height.

        Candidates above the model's own `candidate_score` are merged by weighted NMS exactly
        as in MediaPipe's graph; `min_score` then drops merged faces below it.
        """
        x, side, left, top = self._tensor(rgb, pad)
        self._interp.set_tensor(self._input, x)
        self._interp.invoke()
        raw = self._interp.get_tensor(self._regressors)[0]
        logits = self._interp.get_tensor(self._scores)[0, :, 0]
        # float64: exp(100) overflows float32.
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -SCORE_CLIP, SCORE_CLIP)))
        keep = np.flatnonzero(scores >= self.spec.candidate_score)
        if keep.size == 0:
            return []
        size = float(self.spec.input_size)
        raw, scores, anchors = raw[keep] / size, scores[keep].astype(np.float32), self.anchors[keep]
        centre = raw[:, 0:2] + anchors
        half = raw[:, 2:4] / 2.0
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        kps = raw[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + anchors[:, None, :]
        h, w = rgb.shape[0] + 2 * pad, rgb.shape[1] + 2 * pad
        # Tensor-relative -> image-relative: undo the letterbox.
        to_img = np.array([side / w, side / h], dtype=np.float32)
        offset = np.array([left / w, top / h], dtype=np.float32)
        out = weighted_nms(boxes.astype(np.float32), kps.astype(np.float32), scores, NMS_IOU)
        out = [d for d in out if d.score >= self.min_score]
        for d in out:
            d.box = (d.box.reshape(2, 2) * to_img - offset).ravel()
            d.keypoints = d.keypoints * to_img - offset
        return out

    def close(self) -> None:
        """Nothing to release (the interpreter is freed with the object); here so that both
        detector backends share one interface."""
