"""Test-time views inside the exported graph (training/export.ViewAveraged)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from agelens.manifest import ModelManifest, Normalisation
from tests.conftest import REPO, crops, network_to_fold
from training.augment import normalise, to_float
from training.config import ClassifierConfig
from training.export import ViewAveraged, export_onnx, fp32_graph, quantize_int8, shifted
from training.onnx_import import folded_weights, student_from_onnx

NORM = Normalisation()
STORE = REPO / "model_store/agelens-student"


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


def test_3_5_0_is_3_4_0s_network_with_the_views_its_config_names() -> None:
    """The provenance its config states, while the store holds both versions."""
    if not ((STORE / "3.5.0").is_dir() and (STORE / "3.4.0").is_dir()):
        pytest.skip("3.5.0 or 3.4.0 has left the store")
    cfg = tomllib.loads((REPO / "training/configs/utkface_views_3.5.0.toml").read_text())
    shifts = tuple(tuple(s) for s in cfg["export"]["tta_shifts"])
    assert cfg["export"]["source"] == "model_store/agelens-student/3.4.0/model.onnx"
    new, old = STORE / "3.5.0", STORE / "3.4.0"
    (new_convs, new_head), (old_convs, old_head) = (
        folded_weights(new / "model.onnx"),
        folded_weights(old / "model.onnx"),
    )
    for (w1, b1), (w0, b0) in zip(new_convs, old_convs, strict=True):
        assert np.abs(w1 - w0).max() < 1e-3 and np.abs(b1 - b0).max() < 1e-3  # fp16-stored, rounded again
    assert np.abs(new_head[0] - old_head[0]).max() < 1e-3
    rebuilt = student_from_onnx(old / "model.onnx", ClassifierConfig(), crops(256, 0), NORM)
    x = normalise(to_float(crops(16, 4)), NORM)
    with torch.no_grad():
        expected = torch.softmax(ViewAveraged(rebuilt, True, shifts)(x), 1).numpy()
    assert np.abs(probs(session(new / "model.onnx"), x) - expected).max() < 1e-3
    manifest = ModelManifest.load(new / "manifest.json")
    assert manifest.alignment == ModelManifest.load(old / "manifest.json").alignment
    assert f"{(1 + len(shifts)) * 2} passes" in manifest.notes["test_time_augmentation"]
