"""Born-again teachers that answer on their own crop of each face (`[born_again] teacher_caches`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import training.pipeline as pipeline
from tests.conftest import crops
from training.augment import ZoomedView, normalise, to_float, zoom_to_margin
from training.classifier import OnlineTeachers, build_classifier
from training.config import BornAgainConfig, ClassifierConfig, PipelineConfig
from training.data import Record
from training.dataset import CachedData, Part


def cached(seed: int, names: list[str]) -> CachedData:
    part = Part(
        crops(len(names), seed), torch.zeros(len(names), dtype=torch.int64), [Record(n, 30) for n in names]
    )
    return CachedData(part, part, part, None)  # type: ignore[arg-type]


NAMES = ["a.jpg", "b.jpg", "c.jpg"]


def test_each_teacher_reads_its_own_cache_checked_against_the_students_faces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caches = {
        Path("m0"): cached(1, NAMES),
        Path("tight"): cached(2, NAMES),
        Path("shuffled"): cached(3, NAMES[::-1]),
    }
    loads: list[Path] = []

    def load_data(path: Path) -> CachedData:
        loads.append(path)
        return caches[path]

    monkeypatch.setattr(pipeline, "load_data", load_data)
    student = cached(0, NAMES)
    cfg = PipelineConfig(
        born_again=BornAgainConfig(
            teachers=["x.onnx", "tight_a", "tight_b", "own"],
            teacher_cache=None,
            teacher_caches={"x.onnx": Path("m0"), "tight_a": Path("tight"), "tight_b": Path("tight")},
        )
    )
    out = pipeline.teacher_crops(cfg, student)
    assert out["x.onnx"] is caches[Path("m0")]
    assert out["tight_a"] is out["tight_b"] is caches[Path("tight")]
    assert out["own"] is student  # no cache named: the student's own crops
    assert sorted(loads) == [Path("m0"), Path("tight")]  # a shared cache is read once

    # The shared default applies to every teacher without an entry of its own.
    cfg = PipelineConfig(
        born_again=BornAgainConfig(
            teachers=["p", "q"], teacher_cache=Path("m0"), teacher_caches={"q": Path("tight")}
        )
    )
    out = pipeline.teacher_crops(cfg, student)
    assert out["p"] is caches[Path("m0")] and out["q"] is caches[Path("tight")]

    # Offline targets are indexed by the student's rows: a cache in another order is refused.
    cfg = PipelineConfig(born_again=BornAgainConfig(teachers=["p"], teacher_caches={"p": Path("shuffled")}))
    with pytest.raises(ValueError, match="differ"):
        pipeline.teacher_crops(cfg, student)


def test_the_ensemble_target_is_the_mean_of_each_members_answer_on_its_own_crops() -> None:
    torch.manual_seed(0)
    a, b = build_classifier(ClassifierConfig()).eval(), build_classifier(ClassifierConfig()).eval()
    xa, xb = crops(4, 1), crops(4, 2)
    got = pipeline.ensemble_teacher_logits([(a, xa), (b, xb)], flip_average=False).exp()  # (N, 2, C)

    def probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        z = normalise(to_float(x), pipeline.NORM)
        with torch.no_grad():
            return torch.stack([model(z).softmax(-1), model(z.flip(3)).softmax(-1)], 1)

    want = (probs(a, xa) + probs(b, xb)) / 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # Not the same as both members answering on one set of crops: the views matter.
    wrong = (probs(a, xa) + probs(b, xa)) / 2
    assert (got - wrong).abs().max() > 1e-4

    flipped = pipeline.ensemble_teacher_logits([(a, xa), (b, xb)], flip_average=True).exp()
    torch.testing.assert_close(flipped[:, 0], want.mean(1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(flipped[:, 1], want.mean(1), atol=1e-5, rtol=1e-4)


def test_a_cache_for_an_unknown_teacher_or_with_online_teaching_is_refused() -> None:
    with pytest.raises(ValidationError, match="not in teachers"):
        BornAgainConfig(teachers=["a"], teacher_caches={"b": Path("c")})
    with pytest.raises(ValidationError, match="online"):
        BornAgainConfig(teachers=["a"], online=True, teacher_caches={"a": Path("c")})
    with pytest.raises(ValidationError, match="online"):
        BornAgainConfig(teachers=["a"], online=True, teacher_cache=Path("c"))


def crop_of_plane(margin: float, size: int = 64) -> torch.Tensor:
    """The crop at `margin` of a face whose image is the plane f(X, Y) = 2X + 3Y over the unit
    face box coordinates (AlignmentSpec's geometry: pixel p of the crop sits at
    X = p (1 + 2 margin) / size - margin), one channel."""
    p = (torch.arange(size, dtype=torch.float32) + 0.5) * (1 + 2 * margin) / size - margin
    return (2 * p.view(1, -1) + 3 * p.view(-1, 1)).expand(1, 1, size, size)


def test_zooming_a_crop_gives_the_crop_at_the_other_margin() -> None:
    wide = crop_of_plane(0.0)
    zoomed = zoom_to_margin(wide, 0.0, -0.1)
    # Bilinear resampling is exact on a plane, so the zoomed crop is the tight crop everywhere.
    torch.testing.assert_close(zoomed, crop_of_plane(-0.1), atol=1e-4, rtol=0)
    assert zoom_to_margin(wide, 0.2, 0.2) is wide
    # Zooming out: exact wherever the wider crop stays inside the narrower one's pixels.
    out = zoom_to_margin(crop_of_plane(-0.1), -0.1, 0.0)
    torch.testing.assert_close(out[..., 8:-8, 8:-8], wide[..., 8:-8, 8:-8], atol=1e-4, rtol=0)


def test_an_online_teacher_with_another_margin_answers_on_its_own_crop() -> None:
    torch.manual_seed(0)
    a, b = build_classifier(ClassifierConfig()).eval(), build_classifier(ClassifierConfig()).eval()
    with torch.no_grad():
        b.head.weight.mul_(100)  # a confident member, so its answer depends visibly on its input
    x = normalise(to_float(crops(4, 7)), pipeline.NORM)
    teachers = OnlineTeachers([a, ZoomedView(b, 0.0, -0.1)], None)
    got, embed = teachers(x)
    assert embed is None
    with torch.no_grad():
        want = (a(x).softmax(-1) + b(zoom_to_margin(x, 0.0, -0.1)).softmax(-1)) / 2
        same_view = (a(x).softmax(-1) + b(x).softmax(-1)) / 2
    assert got is not None
    torch.testing.assert_close(got.exp(), want, atol=1e-5, rtol=1e-4)
    assert (got.exp() - same_view).abs().max() > 1e-3


def test_teacher_margins_are_for_online_teachers_named_in_teachers() -> None:
    BornAgainConfig(teachers=["a", "run/b"], online=True, teacher_margins={"run/b": -0.1})
    with pytest.raises(ValidationError, match="not in teachers"):
        BornAgainConfig(teachers=["a"], online=True, teacher_margins={"b": -0.1})
    with pytest.raises(ValidationError, match="online"):
        BornAgainConfig(teachers=["a"], teacher_margins={"a": -0.1})
    with pytest.raises(ValidationError, match="rebuild it first"):
        BornAgainConfig(teachers=["m.onnx"], online=True, teacher_margins={"m.onnx": -0.1})


def test_a_view_ensemble_member_names_its_checkpoint_cache_and_zoom() -> None:
    from research.two_view_teacher.view_ensemble import Member

    plain = Member.parse("runs/a@data/cache/utkface-64")
    assert plain.checkpoint == Path("runs/a/best.pt") and plain.cache == Path("data/cache/utkface-64")
    assert plain.zoom is None
    zoomed = Member.parse("runs/a/last.pt@data/cache/utkface-64@0:-0.1")
    assert zoomed.checkpoint == Path("runs/a/last.pt") and zoomed.zoom == (0.0, -0.1)
