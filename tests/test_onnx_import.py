"""A shipped ONNX student rebuilt as a trainable network (training/onnx_import.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from agelens.manifest import Normalisation
from tests.conftest import crops, export_student
from training.augment import normalise, to_float
from training.classifier import load_classifier
from training.config import ClassifierConfig
from training.data import Record
from training.dataset import CachedData, Part
from training.onnx_import import calibration_sample, conv_bn_pairs, student_from_onnx, write_checkpoint
from training.pipeline import same_faces

SHIPPED = export_student(Path(tempfile.mkdtemp()) / "model.onnx", seed=3)
NORM = Normalisation()


@pytest.fixture(scope="module")
def rebuilt() -> torch.nn.Module:
    return student_from_onnx(SHIPPED, ClassifierConfig(), crops(256, 0), NORM)


def test_the_rebuilt_network_gives_the_shipped_graphs_probabilities(rebuilt: torch.nn.Module) -> None:
    x = normalise(to_float(crops(32, 1)), NORM)
    with torch.no_grad():
        probs = (rebuilt(x).softmax(-1) + rebuilt(x.flip(3)).softmax(-1)) / 2  # the graph's flip TTA
    sess = ort.InferenceSession(str(SHIPPED), providers=["CPUExecutionProvider"])
    shipped = np.exp(sess.run(None, {"input": x.numpy()})[0])
    assert np.abs(shipped - probs.numpy()).max() < 1e-4
    assert shipped.argmax(1).tolist() == probs.numpy().argmax(1).tolist()


def test_batchnorm_is_unfolded_with_the_calibration_statistics(rebuilt: torch.nn.Module) -> None:
    calib = normalise(to_float(crops(256, 0)), NORM)
    stem_conv, stem_bn = conv_bn_pairs(rebuilt)[0]
    with torch.no_grad():
        out = stem_conv(calib)
    torch.testing.assert_close(stem_bn.running_mean, out.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stem_bn.running_var, out.var((0, 2, 3), unbiased=False), atol=1e-4, rtol=1e-3)
    # So in train mode, on the calibration batch, the network is the shipped one: training
    # starts where the shipped network is, not from a jolt.
    # (Only the backbone: dropout before the head would add its own noise.)
    rebuilt.backbone.train()
    try:
        with torch.no_grad():
            train_mode = rebuilt(calib).softmax(-1)
        rebuilt.eval()
        with torch.no_grad():
            eval_mode = rebuilt(calib).softmax(-1)
    finally:
        rebuilt.eval()
    assert (train_mode - eval_mode).abs().max() < 1e-3


def test_another_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="architecture"):
        student_from_onnx(
            SHIPPED, ClassifierConfig(widths=(48, 96, 128, 160), blocks=(1, 1, 1, 1)), crops(8, 0), NORM
        )
    with pytest.raises(ValueError, match="conv of shape"):
        student_from_onnx(SHIPPED, ClassifierConfig(widths=(64, 96, 128)), crops(8, 0), NORM)


def test_a_teacher_cache_must_hold_the_same_faces_in_the_same_order() -> None:
    def data(names: list[str]) -> CachedData:
        part = Part(
            crops(len(names), 0), torch.zeros(len(names), dtype=torch.int64), [Record(n, 30) for n in names]
        )
        return CachedData(part, part, part, None)  # type: ignore[arg-type]

    mine = data(["a.jpg", "b.jpg"])
    assert same_faces(mine, data(["a.jpg", "b.jpg"])) is not mine
    with pytest.raises(ValueError, match="differ"):
        same_faces(mine, data(["b.jpg", "a.jpg"]))


def test_the_rebuilt_network_is_written_as_a_run_that_the_tools_load(
    rebuilt: torch.nn.Module, tmp_path: Path
) -> None:
    path = write_checkpoint(rebuilt, ClassifierConfig(), SHIPPED, tmp_path / "shipped")
    loaded = load_classifier(path)
    x = normalise(to_float(crops(8, 3)), NORM)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), rebuilt(x))


def test_a_run_can_start_from_a_shipped_onnx_file(tmp_path: Path) -> None:
    """`student.init_from = "...model.onnx"`: the run starts from the shipped weights. With a
    learning rate of ~0, the conv weights stay those of the graph."""
    from training.classifier import train_classifier

    part = Part(crops(32, 5), torch.randint(0, 90, (32,)), [Record(f"{i}.jpg", 30) for i in range(32)])
    data = CachedData(part, part, part, None)  # type: ignore[arg-type]
    cfg = ClassifierConfig(epochs=1, batch_size=16, lr=1e-12, init_from=SHIPPED)
    kept = train_classifier(cfg, data, NORM, tmp_path / "run")
    shipped = student_from_onnx(SHIPPED, ClassifierConfig(), crops(32, 5), NORM)
    for name in ("backbone.stem.0.weight", "backbone.stages.2.0.conv2.weight", "head.weight"):
        torch.testing.assert_close(kept.state_dict()[name], shipped.state_dict()[name], atol=1e-6, rtol=0)


def test_the_calibration_sample_is_seeded_and_spread_over_the_cache() -> None:
    # A cache in file-name order is in age order; here the order is brightness.
    ordered = torch.arange(1000).view(1000, 1, 1, 1).expand(1000, 4, 4, 3)
    sample = calibration_sample(ordered, 200)
    assert len(sample) == 200 and len(set(sample[:, 0, 0, 0].tolist())) == 200
    assert torch.equal(sample, calibration_sample(ordered, 200))
    assert abs(float(sample.float().mean()) - 499.5) < 40  # the first 200 would average 99.5
    assert calibration_sample(ordered[:50], 200).shape[0] == 50


def test_the_rebuilt_network_survives_a_batchnorm_recomputation_over_all_crops() -> None:
    """The soup recomputes BN statistics over every train crop. With the statistics of a
    representative sample the network stays the shipped one; with those of the cache's first
    rows (one kind of face) it would not."""
    from torch.optim.swa_utils import update_bn

    from training.augment import normalised_batches

    dark = (crops(96, 11).float() * 0.3).to(torch.uint8)  # the cache's first rows: one kind
    data = torch.cat([dark, crops(288, 12)])
    x = normalise(to_float(crops(32, 13)), NORM)
    sess = ort.InferenceSession(str(SHIPPED), providers=["CPUExecutionProvider"])
    shipped = np.exp(sess.run(None, {"input": x.numpy()})[0])

    def after_recomputation(crops: torch.Tensor, calibration: int) -> float:
        model = student_from_onnx(SHIPPED, ClassifierConfig(), crops, NORM, calibration)
        update_bn(normalised_batches(data, NORM, torch.device("cpu"), 128), model)
        model.eval()
        with torch.no_grad():
            probs = (model(x).softmax(-1) + model(x.flip(3)).softmax(-1)) / 2
        return float(np.abs(probs.numpy() - shipped).max())

    # student_from_onnx samples the crops it is given; the cache's first rows alone are what the
    # import used to take.
    assert after_recomputation(data, 192) < 0.2 * after_recomputation(data[:96], 192)
