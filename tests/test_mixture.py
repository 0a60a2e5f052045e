"""Training on several datasets: the registry, the All-Age-Faces split, per-dataset sampling,
specialist teachers, routed teachers and the photo-condition augmentation."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from training import pipeline
from training.augment import photo_conditions
from training.classifier import OnlineTeachers, epoch_order
from training.config import PipelineConfig
from training.data import Record, read_split
from training.dataset import CachedData, Part, concat_parts
from training.datasets import DatasetEntry, load_registry
from training.near_duplicates import FRACTIONS, age_band, near_duplicate_groups, perceptual_hashes

REPO = Path(__file__).resolve().parent.parent
AAF = Path(os.environ.get("AGELENS_AAF", REPO.parent / "shared" / "datasets" / "aaf" / "faces"))


def test_registry_reads_the_committed_utkface_labels() -> None:
    utk = load_registry()["utkface"]
    for r in read_split(utk.split):
        parsed = utk.parse_name(r.filename)
        assert parsed is not None and (parsed.age, parsed.gender, parsed.race) == (r.age, r.gender, r.race)


def test_registry_reads_aaf_names_and_serial_genders() -> None:
    aaf = load_registry()["aaf"]
    assert aaf.parse_name("00001A02.jpg") == Record("00001A02.jpg", 2, 1, None)
    assert aaf.parse_name("07381A40.jpg") == Record("07381A40.jpg", 40, 0, None)
    assert aaf.parse_name("README.txt") is None


def test_a_third_dataset_is_an_entry_not_code(tmp_path: Path) -> None:
    entry = DatasetEntry.model_validate(
        {
            "name": "faces_x",
            "title": "X",
            "root": tmp_path,
            "filename_pattern": r"^p(?P<serial>\d+)_age(?P<age>\d+)",
            "gender_by_serial": [[0, 9, 0], [10, 99, 1]],
            "split": tmp_path / "x.csv",
            "cache": tmp_path / "cache",
            "terms": "test",
        }
    )
    for name in ("p3_age40.jpg", "p12_age7.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert entry.scan() == [Record("p12_age7.png", 7, 1, None), Record("p3_age40.jpg", 40, 0, None)]
    with pytest.raises(ValueError, match="group named age"):
        DatasetEntry.model_validate({**entry.model_dump(), "filename_pattern": r"^p(?P<serial>\d+)"})


def test_committed_aaf_split_is_stratified() -> None:
    records = read_split(load_registry()["aaf"].split)
    assert len(records) == 8636
    strata = collections.defaultdict(collections.Counter)
    for r in records:
        strata[(age_band(r.age), r.gender)][r.split] += 1
    for counts in strata.values():
        total = sum(counts.values())
        for part, share in FRACTIONS.items():
            assert abs(counts[part] / total - share) < 0.02 + 2 / total, counts


@pytest.mark.skipif(not AAF.is_dir(), reason="All-Age-Faces not found at ../shared/datasets/aaf")
def test_near_identical_aaf_images_stay_on_one_side() -> None:
    records = read_split(load_registry()["aaf"].split)
    groups = near_duplicate_groups(perceptual_hashes([AAF / r.filename for r in records]))
    multi = [g for g in groups if len(g) > 1]
    assert len(multi) == 133
    for g in multi:
        assert len({records[i].split for i in g}) == 1, [records[i] for i in g]


def _data(sizes: list[int]) -> CachedData:
    parts = [
        Part(torch.zeros(n, 4, 4, 3, dtype=torch.uint8), torch.full((n,), 30), [Record(f"{i}", 30)] * n)
        for i, n in enumerate(sizes)
    ]
    train = concat_parts(parts)
    return CachedData(train, train, train, spec=None, datasets=[f"d{i}" for i in range(len(sizes))])  # type: ignore[arg-type]


def test_epoch_draws_follow_the_dataset_shares() -> None:
    data = _data([9000, 1000])
    order = epoch_order(data, [0.6, 0.4], torch.Generator().manual_seed(0))
    assert len(order) == 10000
    share = float((data.train.source[order] == 1).float().mean())
    assert abs(share - 0.4) < 0.02
    # Without shares: a permutation, every face once.
    assert sorted(epoch_order(data, None, torch.Generator().manual_seed(0)).tolist()) == list(range(10000))


class Constant(nn.Module):
    def __init__(self, cls: int) -> None:
        super().__init__()
        self.cls = cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(x), 5), -20.0)
        out[:, self.cls] = 20.0
        return out


def test_only_keeps_the_named_datasets_faces_and_renumbers_them() -> None:
    parts = [
        Part(
            torch.full((n, 4, 4, 3), i, dtype=torch.uint8),
            torch.full((n,), 10 * (i + 1)),
            [Record(f"{i}", 0)] * n,
        )
        for i, n in enumerate([5, 3, 2])
    ]
    both = concat_parts(parts)
    data = CachedData(both, both, both, spec=None, datasets=["a", "b", "c"])  # type: ignore[arg-type]
    only = data.only(["c", "a"])
    assert only.datasets == ["c", "a"]
    assert only.train.ages.tolist() == [30] * 2 + [10] * 5
    assert only.train.source.tolist() == [0] * 2 + [1] * 5
    assert only.test.crops[:, 0, 0, 0].tolist() == [2] * 2 + [0] * 5
    with pytest.raises(ValueError, match="not in the data"):
        data.only(["d"])


def _mixture_config(**specialists: dict) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"data": {"datasets": {"utkface": 0.6, "aaf": 0.4}}, "specialists": specialists}
    )


def test_a_specialist_must_learn_datasets_of_the_mixture() -> None:
    assert _mixture_config(aaf_teacher={"datasets": ["aaf"]}).specialists["aaf_teacher"].datasets == ["aaf"]
    with pytest.raises(ValueError, match="not in \\[data\\] datasets"):
        _mixture_config(aaf_teacher={"datasets": ["imdb"]})
    with pytest.raises(ValueError, match="belongs to another stage"):
        _mixture_config(dk_teacher={"datasets": ["aaf"]})
    with pytest.raises(ValueError):
        _mixture_config(aaf_teacher={"datasets": []})


def test_the_specialist_stage_trains_on_its_datasets_faces_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = {}

    def fake_run(cfg, data, out, device=None, shares=None, **_):  # type: ignore[no-untyped-def]
        seen.update(cfg=cfg, data=data, out=out, shares=shares)
        return {"mae": 5.0, "cs5": 0.5}

    monkeypatch.setattr(pipeline, "run_classifier", fake_run)
    cfg = _mixture_config(aaf_teacher={"datasets": ["aaf"], "epochs": 3}).model_copy(
        update={"run_dir": tmp_path, "device": "cpu"}
    )
    data = _data([7, 4])
    data.datasets = ["utkface", "aaf"]
    assert pipeline.stage_specialists(cfg, data) == {"aaf_teacher": {"mae": 5.0, "cs5": 0.5}}
    assert seen["out"] == tmp_path / "aaf_teacher"
    assert seen["data"].datasets == ["aaf"] and len(seen["data"].train) == 4
    assert seen["shares"] is None  # one dataset: every face alike
    # The checkpoint records training settings only, which load_classifier can read back.
    assert seen["cfg"].epochs == 3 and not hasattr(seen["cfg"], "datasets")


def test_routed_teachers_teach_their_datasets_only() -> None:
    teachers = OnlineTeachers([Constant(1), Constant(3)], routes=[[0], None])
    logits, _ = teachers(torch.zeros(4, 3, 4, 4), torch.tensor([0, 1, 0, 1]))
    assert logits is not None
    probs = logits.exp()
    # Dataset 0: both teachers, averaged; dataset 1: the second only.
    assert torch.allclose(probs[0, [1, 3]], torch.tensor([0.5, 0.5]), atol=1e-4)
    assert torch.allclose(probs[1, 3], torch.tensor(1.0), atol=1e-4)
    unrouted, _ = OnlineTeachers([Constant(1), Constant(3)])(torch.zeros(2, 3, 4, 4))
    assert unrouted is not None and torch.allclose(
        unrouted.exp()[:, [1, 3]], torch.full((2, 2), 0.5), atol=1e-4
    )


def test_photo_conditions_degrade_a_share_of_the_batch() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=g)
    assert torch.equal(photo_conditions(x, torch.Generator().manual_seed(1), 0.0), x)
    y = photo_conditions(x, torch.Generator().manual_seed(1), 0.5)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    changed = (y - x).abs().flatten(1).max(1).values > 1e-3
    assert 16 < int(changed.sum()) < 48
    again = photo_conditions(x, torch.Generator().manual_seed(1), 0.5)
    assert torch.equal(y, again)  # the same generator, the same degradations
