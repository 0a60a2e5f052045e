"""The weight line from a warm start to its fine-tunes (training/interpolate.py) and the fitted
hint adapter: values, not just shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agelens.manifest import AlignmentSpec
from training.augment import normalise, to_float
from training.classifier import TeacherTargets, build_classifier, fit_adapter, load_classifier
from training.config import ClassifierConfig, InterpolateConfig
from training.data import Record
from training.dataset import NORM, CachedData, Part, concat_parts
from training.interpolate import choose_weight, lerp_weights, run_interpolation, served_val_mae


def _faces(n: int, dataset: int, seed: int) -> Part:
    gen = torch.Generator().manual_seed(seed)
    crops = torch.randint(0, 256, (n, 64, 64, 3), generator=gen, dtype=torch.uint8)
    ages = torch.randint(1, 90, (n,), generator=gen)
    return Part(crops, ages, [Record(f"{dataset}_{i}.jpg", int(a)) for i, a in enumerate(ages)])


def _mixture() -> CachedData:
    parts = {
        s: concat_parts([_faces(24, 0, 10 + k), _faces(16, 1, 20 + k)])
        for k, s in enumerate(("train", "val", "test"))
    }
    return CachedData(
        parts["train"], parts["val"], parts["test"], AlignmentSpec(), datasets=["utkface", "aaf"]
    )


def test_the_line_runs_from_start_to_end_and_keeps_integer_buffers() -> None:
    torch.manual_seed(0)
    a, b = (
        build_classifier(ClassifierConfig()).state_dict(),
        build_classifier(ClassifierConfig()).state_dict(),
    )
    conv = next(k for k, v in a.items() if v.dim() == 4)
    counter = next(k for k in a if k.endswith("num_batches_tracked"))
    b[counter] = a[counter] + 7
    assert torch.equal(lerp_weights(a, b, 0.0)[conv], a[conv])
    assert torch.allclose(lerp_weights(a, b, 1.0)[conv], b[conv])
    assert torch.allclose(lerp_weights(a, b, 0.25)[conv], 0.75 * a[conv] + 0.25 * b[conv], atol=1e-6)
    assert torch.equal(lerp_weights(a, b, 0.5)[counter], a[counter])
    with pytest.raises(ValueError, match="not one architecture"):
        lerp_weights(a, {k: v for k, v in b.items() if k != conv}, 0.5)


def test_the_chosen_weight_is_the_best_mean_that_keeps_the_allowance() -> None:
    def point(w: float, utk: float, aaf: float) -> dict:
        return {"weight": w, "val_mae": {"utkface": utk, "aaf": aaf}, "val_mean_mae": (utk + aaf) / 2}

    points = [point(0.0, 4.80, 7.0), point(0.5, 4.82, 6.5), point(0.8, 4.85, 6.2), point(1.0, 4.91, 6.0)]
    assert choose_weight(points, {"utkface": 0.05})["weight"] == 0.8
    assert choose_weight(points, {})["weight"] == 1.0  # no allowance: the best mean
    assert choose_weight(points, {"utkface": 0.01})["weight"] == 0.0  # nothing qualifies: the start


def test_interpolation_scores_every_weight_and_writes_the_chosen_network(tmp_path: Path) -> None:
    data = _mixture()
    cfg = ClassifierConfig()
    torch.manual_seed(1)
    start, member = build_classifier(cfg).eval(), build_classifier(cfg).eval()
    (tmp_path / "m").mkdir()
    torch.save(
        {"model": member.state_dict(), "config": cfg.model_dump(), "epoch": 3}, tmp_path / "m" / "best.pt"
    )
    chosen, report = run_interpolation(
        InterpolateConfig(weights=[0.5, 1.0], keep={}), start, [tmp_path / "m"], data, tmp_path / "out"
    )
    by_weight = {p["weight"]: p for p in report["points"]}
    assert sorted(by_weight) == [0.0, 0.5, 1.0]
    # The ends of the line are the networks themselves.
    assert by_weight[0.0]["val_mae"] == served_val_mae(start, data)
    assert by_weight[1.0]["val_mae"] == served_val_mae(member, data)
    best = min(report["points"], key=lambda p: p["val_mean_mae"])
    assert report["chosen_weight"] == best["weight"]
    saved = torch.load(tmp_path / "out" / "best.pt", weights_only=False)
    assert saved["interpolation"]["weight"] == best["weight"] and saved["epoch"] == 3
    assert served_val_mae(load_classifier(tmp_path / "out" / "best.pt"), data) == best["val_mae"]
    assert served_val_mae(chosen, data) == best["val_mae"]
    with pytest.raises(ValueError, match="not in the data"):
        run_interpolation(
            InterpolateConfig(keep={"imdb": 0.1}), start, [tmp_path / "m"], data, tmp_path / "x"
        )


def test_a_fitted_hint_adapter_recovers_a_linear_teacher() -> None:
    """When the teacher's embedding is a linear map of the student's features, the fitted
    adapter reproduces its direction (a random one does not)."""
    data = _mixture()
    model = build_classifier(ClassifierConfig()).eval()
    x = normalise(to_float(data.train.crops), NORM)
    with torch.no_grad():
        feats = model.forward_features(x)[0]
    mapping = torch.randn(feats.shape[1], 16, generator=torch.Generator().manual_seed(0))
    embed = feats @ mapping
    targets = TeacherTargets(ordinal_embed=torch.stack([embed, embed], dim=1))
    adapter = torch.nn.Linear(feats.shape[1], 16)
    with torch.no_grad():
        random_cos = torch.cosine_similarity(adapter(feats), embed, dim=1).mean()
    fit_adapter(adapter, model, data, NORM, torch.device("cpu"), targets, None, ridge=1e-6)
    with torch.no_grad():
        fitted_cos = torch.cosine_similarity(adapter(feats), embed, dim=1).mean()
    assert fitted_cos > 0.99 > random_cos
