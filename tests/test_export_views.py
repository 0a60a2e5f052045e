"""Test-time views inside the exported graph (training/export.ViewAveraged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from agelens.manifest import Normalisation
from tests.conftest import crops, network_to_fold
from training.augment import normalise, to_float
from training.config import ClassifierConfig
from training.export import ViewAveraged, export_onnx, fp32_graph, quantize_int8, shifted
from training.onnx_import import student_from_onnx

NORM = Normalisation()


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def probs(sess: ort.InferenceSession, x: torch.Tensor) -> np.ndarray:
    return np.exp(sess.run(None, {"input": x.numpy()})[0])


def test_a_shift_moves_whole_pixels_and_replicates_the_border() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    up_left = shifted(x, -1, -1)  # content one pixel up and one left
    assert up_left[0, 0].tolist() == [[5, 6, 7, 7], [9, 10, 11, 11], [13, 14, 15, 15], [13, 14, 15, 15]]
    down_right = shifted(x, 1, 1)
    assert down_right[0, 0].tolist() == [[0, 0, 1, 2], [0, 0, 1, 2], [4, 4, 5, 6], [8, 8, 9, 10]]
    assert shifted(x, 0, 0) is x
    # Two pixels right: nothing resampled, every value is one of the input's.
    two = shifted(x, 2, 0)
    assert two[0, 0, 1].tolist() == [4, 4, 4, 5]


def test_the_graph_averages_its_passes_and_exports_and_quantises(tmp_path: Path) -> None:
    model = network_to_fold()
    views = ViewAveraged(model, True, ((-1, 1),)).eval()
    assert views.passes == 4
    one_pass = ViewAveraged(model, flip=False)  # agelens export --no-tta
    assert one_pass.passes == 1 and one_pass.describe() == "none"
    assert views.describe().startswith("the crop and the crop moved 1 px left and 1 px down, each with its")
    x = normalise(to_float(crops(5, 1)), NORM)
    with torch.no_grad():
        moved = shifted(x, -1, 1)
        by_hand = sum(torch.softmax(model(v), 1) for v in (x, x.flip(3), moved, moved.flip(3))) / 4
        got = torch.softmax(views(x), 1)
    torch.testing.assert_close(got, by_hand, atol=1e-6, rtol=0)
    # The shifted views change the answer (an untrained network is near uniform: compare logs).
    with torch.no_grad():
        assert (ViewAveraged(model)(x) - views(x)).abs().max() > 1e-3
    path = tmp_path / "views.onnx"
    export_onnx(views, path, 64)
    for n in (1, 5):
        assert np.abs(probs(session(path), x[:n]) - got[:n].numpy()).max() < 1e-5
    int8 = tmp_path / "views.int8.onnx"
    calib = normalise(to_float(crops(64, 2)), NORM).numpy()
    quantize_int8(fp32_graph(path, tmp_path / "f32.onnx"), int8, calib)
    ages = np.arange(101)
    assert np.abs(probs(session(int8), x) @ ages - got.numpy() @ ages).max() < 1.0


def test_a_multi_view_graph_gives_back_its_network(tmp_path: Path) -> None:
    """onnx_import reads the first pass, which is the plain crop."""
    model = network_to_fold()
    path = tmp_path / "views.onnx"
    export_onnx(ViewAveraged(model, True, ((0, -1), (1, 1))), path, 64)
    rebuilt = student_from_onnx(path, ClassifierConfig(), crops(128, 0), NORM)
    x = normalise(to_float(crops(8, 3)), NORM)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).softmax(1), model(x).softmax(1), atol=1e-5, rtol=0)
