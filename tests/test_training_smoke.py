"""The whole training pipeline on a few dozen faces (training/configs/smoke.toml), through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from agelens.manifest import ModelManifest, sha256_file
from tests.conftest import DATASET, REPO, needs_dataset, network_to_fold
from training.config import PipelineConfig
from training.export import export_onnx
from training.models import AgeClassifier, OrdinalTeacher, count_parameters, permutation_classes
from training.ordinal import perm_lookup, sample_sequences


def write_config(tmp: Path) -> Path:
    cfg = tomllib.loads((REPO / "training/configs/smoke.toml").read_text())
    text = (REPO / "training/configs/smoke.toml").read_text()
    text = text.replace(f'run_dir = "{cfg["run_dir"]}"', f'run_dir = "{tmp / "run"}"')
    text = text.replace(f'cache = "{cfg["data"]["cache"]}"', f'cache = "{tmp / "cache"}"')
    text = text.replace(f'model_store = "{cfg["export"]["model_store"]}"', f'model_store = "{tmp / "store"}"')
    text = text.replace(f'root = "{cfg["data"]["root"]}"', f'root = "{DATASET}"')
    text = text.replace(f'split = "{cfg["data"]["split"]}"', f'split = "{REPO / cfg["data"]["split"]}"')
    out = tmp / "smoke.toml"
    out.write_text(text)
    return out


@needs_dataset
@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    t0 = time.time()
    subprocess.run(
        [sys.executable, "-m", "agelens.cli", "train", "--config", str(cfg)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    elapsed = time.time() - t0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"dk_teacher", "ordinal_teacher", "ablation", "student"} <= set(summary)
    assert set(summary["ablation"]["arms"]) == {"student_ce", "student_dk", "student_hint", "student_dk_hint"}
    assert summary["ordinal_teacher"]["test"]["chance"] == pytest.approx(1 / 12)
    model_dir = tmp_path / "store" / "agelens-smoke" / "0.0.1"
    manifest = ModelManifest.load(model_dir / "manifest.json")
    assert manifest.sha256 == sha256_file(model_dir / "model.onnx")
    assert manifest.metrics is not None and manifest.metrics.n == 24
    assert (model_dir / "MODEL_CARD.md").read_text().startswith("# Model card")
    assert manifest.int8 is not None
    assert manifest.int8.sha256 == sha256_file(model_dir / manifest.int8.file)
    # The detector that built the training crops is recorded for the service to use.
    assert manifest.detector == PipelineConfig.load(cfg).data.detector
    # The shipped graph: the crop and its mirror, averaged inside the file.
    assert manifest.notes["test_time_augmentation"] == "horizontal flip, probabilities averaged in the graph"
    # The age's temperature was chosen on val between the raw and the calibrated softmax, and
    # the test MAE is the one at that temperature.
    ex = manifest.metrics.extra
    assert manifest.estimate_temperature in (1.0, manifest.temperature)
    chosen = "val_mae_calibrated_softmax" if manifest.estimate_temperature != 1.0 else "val_mae_raw_softmax"
    assert ex["val_mae"] == ex[chosen] == min(ex["val_mae_raw_softmax"], ex["val_mae_calibrated_softmax"])
    if manifest.estimate_temperature == 1.0:
        assert manifest.metrics.mae == ex["test_mae_raw_softmax"]
    # Resume: a second run finds every stage done and only re-exports.
    t1 = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "agelens.cli",
            "train",
            "--config",
            str(cfg),
            "--stages",
            "dk_teacher,ordinal_teacher,ablation,student",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert time.time() - t1 < elapsed
    assert elapsed < 120, f"smoke pipeline took {elapsed:.0f} s"
    # Exporting the same checkpoint again registers the same file; a version that holds another
    # model is never overwritten.
    export = [sys.executable, "-m", "agelens.cli", "train", "--config", str(cfg), "--stages", "export"]
    subprocess.run(export, cwd=REPO, check=True, capture_output=True)
    assert ModelManifest.load(model_dir / "manifest.json").sha256 == manifest.sha256
    other = manifest.model_copy(update={"sha256": "0" * 64})
    other.save(model_dir / "manifest.json")
    refused = subprocess.run(export, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode != 0 and "already registered" in refused.stderr
    assert ModelManifest.load(model_dir / "manifest.json").sha256 == "0" * 64


def test_student_is_compact() -> None:
    assert count_parameters(AgeClassifier()) <= 500_000


def test_onnx_export_parity_and_dynamic_batch(tmp_path: Path) -> None:
    model = network_to_fold()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, 64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.randn(n, 3, 64, 64)
        with torch.no_grad():
            ref = torch.softmax(model(x), 1).numpy()
        got = torch.softmax(torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]), 1).numpy()
        assert got.shape == (n, 101)
        assert np.abs(ref - got).max() <= 1e-4


def test_fp16_weight_storage_halves_the_file_and_keeps_the_outputs(tmp_path: Path) -> None:
    from training.export import store_weights_fp16

    torch.manual_seed(0)
    model = AgeClassifier().eval()
    fp32, fp16 = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    export_onnx(model, fp32, 64)
    assert store_weights_fp16(fp32, fp16) > 10
    assert fp16.stat().st_size < 0.55 * fp32.stat().st_size
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    outs = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for p in (fp32, fp16)
    ]
    # Still float32 in and out, and the same answer up to fp16 rounding of the weights.
    assert outs[1].dtype == np.float32
    p32, p16 = (torch.softmax(torch.from_numpy(o), 1).numpy() for o in outs)
    assert np.abs(p32 - p16).max() < 2e-3


def test_permutation_classes_merge_reverses() -> None:
    classes = permutation_classes(4)
    assert len(classes) == 12
    lookup = perm_lookup(4)
    assert lookup[(0, 1, 2, 3)] == lookup[(3, 2, 1, 0)]
    assert len(set(lookup.values())) == 12
    teacher = OrdinalTeacher(k=4)
    assert teacher(torch.zeros(2, 4, 3, 64, 64)).shape == (2, 12)


def test_sampled_sequences_respect_the_gap_and_labels_sort_them() -> None:
    rng = np.random.default_rng(0)
    ages = rng.integers(1, 90, 500)
    seqs, labels = sample_sequences(ages, 4, 5, 200, rng)
    perms = permutation_classes(4)
    for seq, label in zip(seqs, labels, strict=True):
        a = ages[seq]
        assert np.all(np.diff(np.sort(a)) >= 5)
        ordered = a[list(perms[label])]
        assert np.all(np.diff(ordered) > 0) or np.all(np.diff(ordered) < 0)


def _random_data() -> object:
    from agelens.manifest import AlignmentSpec
    from training.data import Record
    from training.dataset import CachedData, Part

    g = torch.Generator().manual_seed(0)

    def part(n: int, name: str) -> Part:
        ages = torch.randint(0, 90, (n,), generator=g)
        crops = torch.randint(0, 255, (n, 64, 64, 3), generator=g, dtype=torch.uint8)
        return Part(crops, ages, [Record(f"{name}{i}.jpg", int(a), split=name) for i, a in enumerate(ages)])

    return CachedData(part(32, "train"), part(16, "val"), part(16, "test"), AlignmentSpec())


def test_interrupted_training_resumes_from_its_last_epoch(tmp_path: Path) -> None:
    import json as _json

    from agelens.manifest import Normalisation
    from training.classifier import train_classifier
    from training.config import ClassifierConfig

    data = _random_data()
    cfg = ClassifierConfig(epochs=1, batch_size=16)
    train_classifier(cfg, data, Normalisation(), tmp_path)  # type: ignore[arg-type]
    # "Restart" with the full schedule: epoch 0 is not trained again.
    train_classifier(cfg.model_copy(update={"epochs": 3}), data, Normalisation(), tmp_path)  # type: ignore[arg-type]
    epochs = [_json.loads(line)["epoch"] for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["epoch"] == 2 and not (tmp_path / "last.tmp").exists()


def test_int8_weights_use_seven_bits_and_track_the_float_model(tmp_path: Path) -> None:
    """reduce_range: int8 weights within [-64, 64], so onnxruntime's uint8 x int8 kernels cannot
    overflow their int16 pair sums (2 x 255 x 64 < 32768) on CPUs without VNNI (that overflow
    cost 2.1.0's int8 file +0.65 test MAE)."""
    import onnx
    from onnx import numpy_helper

    from training.export import ViewAveraged, fp32_graph, quantize_int8, store_weights_fp16

    torch.manual_seed(0)
    model = AgeClassifier().eval()
    exported, fp16 = tmp_path / "tta.onnx", tmp_path / "tta16.onnx"
    export_onnx(ViewAveraged(model), exported, 64)
    store_weights_fp16(exported, fp16)  # the shipped storage: quantise from what ships
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (64, 3, 64, 64)).astype(np.float32)
    int8 = tmp_path / "tta.int8.onnx"
    quantize_int8(fp32_graph(fp16, tmp_path / "f32.onnx"), int8, calib)
    weights = [
        numpy_helper.to_array(t)
        for t in onnx.load(str(int8)).graph.initializer
        if t.data_type == onnx.TensorProto.INT8
    ]
    assert len(weights) >= 10  # every conv of the backbone
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    assert max(int(np.abs(w).max()) for w in weights) >= 60  # the 7-bit range is used, not wasted
    x = rng.uniform(-1, 1, (8, 3, 64, 64)).astype(np.float32)
    p_float, p_int8 = (
        torch.softmax(
            torch.from_numpy(
                ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            ),
            1,
        ).numpy()
        for p in (fp16, int8)
    )
    ages = np.arange(101)
    assert np.abs(p_float @ ages - p_int8 @ ages).max() < 1.0


def test_online_teachers_with_mixup_train_and_match_their_members(tmp_path: Path) -> None:
    """Born-again `online`: the ensemble's target is the log of its members' mean probability on
    the very batch the student sees; mixup is refused with offline targets, which describe
    unmixed crops."""
    from agelens.manifest import Normalisation
    from training.classifier import OnlineTeachers, TeacherTargets, train_classifier
    from training.config import ClassifierConfig, DistillConfig

    torch.manual_seed(0)
    # A member may be wider than the student (stage_born_again builds each from its own
    # checkpoint's config): the direction training/README.md leaves for a GPU.
    members = [AgeClassifier(), AgeClassifier(widths=(96, 192, 256), stem=48)]
    teachers = OnlineTeachers(members, OrdinalTeacher(k=4, embed_dim=32))
    x = torch.randn(3, 3, 64, 64)
    logits, embed = teachers(x)
    assert logits is not None and embed is not None and embed.shape == (3, 32)
    with torch.no_grad():
        mean = (members[0](x).softmax(-1) + members[1](x).softmax(-1)) / 2
    assert torch.allclose(logits.exp(), mean, atol=1e-6)
    assert not any(m.training for m in members)  # BN statistics frozen, dropout off

    data = _random_data()
    cfg = ClassifierConfig(epochs=2, batch_size=16, mixup=1.0)
    distill = DistillConfig(alpha=1.0, beta=1.0, temperature=2.0)
    train_classifier(cfg, data, Normalisation(), tmp_path / "online", distill=distill, online=teachers)  # type: ignore[arg-type]
    history = [json.loads(line) for line in (tmp_path / "online" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(h["kd"] > 0 and h["hint"] > 0 for h in history)
    offline = TeacherTargets(dk_logits=torch.zeros(len(data.train), 2, 101))  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="mixup needs online teachers"):
        train_classifier(cfg, data, Normalisation(), tmp_path / "offline", offline, distill)  # type: ignore[arg-type]


def test_band_metrics_give_the_signed_error_and_the_prior_correction_removes_a_pull() -> None:
    """Per-band bias is estimate minus label; dividing out a training prior that crowds the middle
    moves the old band's estimates up (research/prior_shift/prior_shift.py)."""
    from agelens.ages import softmax
    from research.prior_shift.prior_shift import training_prior
    from training.evaluate import compute_metrics
    from training.pipeline import AGES

    true = np.array([5.0, 8.0, 70.0, 80.0])
    probs = np.zeros((4, 101))
    probs[[0, 1, 2, 3], [7, 10, 60, 70]] = 1.0  # children +2, old -10
    bands = {b.name: b for b in compute_metrics(probs, true, AGES).bands}
    assert bands["0-12"].bias == pytest.approx(2.0) and bands["60+"].bias == pytest.approx(-10.0)
    assert bands["60+"].mae == pytest.approx(10.0)

    prior = training_prior(np.repeat(np.arange(20, 40), 50))  # a training set of 20-39 year olds
    assert prior.sum() == pytest.approx(1.0) and prior.min() > 0 and prior.argmax() in range(20, 40)
    # A face the model finds as likely 30 as 70: the prior it learned under pulled it to the middle.
    logits = np.log(np.full((1, 101), 1e-6))
    logits[0, [30, 70]] = 0.0
    before = float(softmax(logits)[0] @ AGES)
    after = float(softmax(logits - np.log(prior))[0] @ AGES)
    assert before == pytest.approx(50.0, abs=0.1) and after > 60.0


def test_warm_start_and_swa_average_the_epoch_end_weights(tmp_path: Path) -> None:
    """`init_from` starts from a checkpoint's weights; with `swa` the learning rate stays at `lr`
    after warm-up, and best.pt holds the equal average of the epoch-end weights, with BN
    statistics of its own."""
    from agelens.manifest import Normalisation
    from training.classifier import load_classifier, train_classifier
    from training.config import ClassifierConfig

    data = _random_data()
    base = ClassifierConfig(epochs=1, batch_size=16)
    train_classifier(base, data, Normalisation(), tmp_path / "first")  # type: ignore[arg-type]
    init = load_classifier(tmp_path / "first" / "best.pt")

    # A learning rate of ~0 keeps every epoch-end weight at the start: the average must be it.
    frozen = base.model_copy(
        update={"epochs": 2, "lr": 1e-12, "init_from": tmp_path / "first" / "best.pt", "swa": True}
    )
    kept = train_classifier(frozen, data, Normalisation(), tmp_path / "frozen")  # type: ignore[arg-type]
    for name, w in init.state_dict().items():
        if "weight" in name and w.dtype == torch.float32:
            assert torch.allclose(kept.state_dict()[name], w, atol=1e-6), name
    history = [json.loads(line) for line in (tmp_path / "frozen" / "history.jsonl").read_text().splitlines()]
    assert [h["lr"] for h in history] == [1e-12, 1e-12]  # constant after warm-up, no cosine decay
    state = torch.load(tmp_path / "frozen" / "last.pt", weights_only=False)
    assert int(state["averaged"]["n_averaged"]) == 2

    # With a real learning rate the average differs from the last epoch's weights.
    moving = frozen.model_copy(update={"lr": 3e-3})
    kept = train_classifier(moving, data, Normalisation(), tmp_path / "moving")  # type: ignore[arg-type]
    last = torch.load(tmp_path / "moving" / "last.pt", weights_only=False)["model"]
    name = "backbone.stem.0.weight"
    assert not torch.allclose(kept.state_dict()[name], last[name])
    # BN statistics were recomputed for the averaged weights, not copied from the initial model.
    bn = "backbone.stem.1.running_mean"
    assert not torch.allclose(kept.state_dict()[bn], init.state_dict()[bn])

    with pytest.raises(ValueError, match="two ways to average"):
        ClassifierConfig(swa=True, ema_decay=0.99)


def test_the_age_estimate_temperature_is_chosen_on_val() -> None:
    """Too-wide distributions pull their mean toward the middle of 0-100: the calibrated (sharper)
    temperature is chosen when it lowers val MAE, and temperature 1 when it does not."""
    from training.evaluate import choose_estimate_temperature

    ages = np.arange(101, dtype=np.float64)
    rng = np.random.default_rng(0)
    true = rng.integers(1, 90, 500).astype(np.float64)
    centre = true + rng.normal(0, 3, true.shape)
    # A wide Gaussian around each centre, times a prior that favours ages near 30: the mean
    # of the product lies between the centre and 30, as a smoothed-label student's does.
    logits = -((ages[None] - centre[:, None]) ** 2) / (2 * 12.0**2) - ((ages[None] - 30) ** 2) / (2 * 40.0**2)
    t, maes = choose_estimate_temperature(logits, true, ages, calibrated=0.5)
    assert t == 0.5 and maes["calibrated"] < maes["raw"]
    # A temperature above 1 widens them further: temperature 1 is kept.
    t, maes = choose_estimate_temperature(logits, true, ages, calibrated=2.0)
    assert t == 1.0 and maes["calibrated"] > maes["raw"]


def test_median_age_interpolates_inside_its_class_and_paired_change_has_its_standard_error() -> None:
    from research.median_readout.readout import median_age
    from training.evaluate import paired_mae_change

    ages = np.arange(101, dtype=np.float64)
    p = np.zeros((3, 101))
    p[0, 40] = 1.0  # all mass in one class: its centre
    p[1, [10, 20]] = 0.5  # the 0.5 quantile is reached at the upper edge of class 10
    p[2, [30, 31, 90]] = [0.25, 0.5, 0.25]  # a far tail moves the mean (45.75), not the median
    np.testing.assert_allclose(median_age(p, ages), [40.0, 10.5, 31.0])
    true = np.array([1.0, 2.0, 3.0, 4.0])
    out = paired_mae_change(new=true + np.array([0, 0, 1, 1]), old=true + np.array([1, 1, 1, -1]), true=true)
    # Face by face: -1, -1, 0, 0 -> mean -0.5, sample std 0.577, over sqrt(4).
    assert out == {"mae_change": -0.5, "std_error": round(np.std([-1, -1, 0, 0], ddof=1) / 2, 4)}


def test_a_weight_soup_averages_weights_keeps_counters_and_refuses_other_architectures(
    tmp_path: Path,
) -> None:
    from research.weight_soup.soup import save_soup
    from training.classifier import build_classifier, load_classifier
    from training.config import ClassifierConfig
    from training.interpolate import average_weights

    cfg = ClassifierConfig()
    torch.manual_seed(0)
    a, b = build_classifier(cfg), build_classifier(cfg)
    sa, sb = a.state_dict(), b.state_dict()
    soup = average_weights([sa, sb])
    weight = next(k for k, v in sa.items() if v.is_floating_point() and v.dim() == 4)
    assert torch.allclose(soup[weight], (sa[weight] + sb[weight]) / 2)
    assert not torch.equal(soup[weight], sa[weight])
    counter = next(k for k in sa if k.endswith("num_batches_tracked"))
    assert soup[counter].dtype == sa[counter].dtype
    wide = build_classifier(cfg.model_copy(update={"widths": (96, 192, 256), "stem": 48})).state_dict()
    with pytest.raises(ValueError, match="not one architecture"):
        average_weights([sa, wide])
    # Saved in the members' checkpoint format, so export and reevaluate load it like any run.
    member = tmp_path / "member.pt"
    torch.save({"model": sa, "config": cfg.model_dump(), "epoch": 3, "val_mae": 5.0}, member)
    a.load_state_dict(soup)
    saved = save_soup(a, member, [member, member], tmp_path / "soup")
    loaded = load_classifier(saved)
    assert torch.equal(loaded.state_dict()[weight], soup[weight])
    assert torch.load(saved, weights_only=False)["soup"] == [str(member), str(member)]


def test_a_soup_ingredient_may_be_a_runs_last_checkpoint(tmp_path: Path) -> None:
    """A run's last.pt (resume format: weights and optimiser, no config) is an ingredient too;
    its network is built from the best.pt beside it, and its own weights are the ones used."""
    from research.weight_soup.soup import ingredient_checkpoint, load_ingredient, save_soup
    from training.checkpoint import save_resume_state
    from training.classifier import build_classifier
    from training.config import ClassifierConfig

    cfg = ClassifierConfig()
    torch.manual_seed(0)
    best_net, last_net = build_classifier(cfg), build_classifier(cfg)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": best_net.state_dict(), "config": cfg.model_dump(), "epoch": 0}, run / "best.pt")
    opt = torch.optim.SGD(last_net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    save_resume_state(run / "last.pt", last_net, opt, sched, torch.Generator(), epoch=17, best=5.0)

    assert ingredient_checkpoint(run) == run / "best.pt"
    assert ingredient_checkpoint(run / "last.pt") == run / "last.pt"
    weight = next(k for k, v in last_net.state_dict().items() if v.dim() == 4)
    loaded = load_ingredient(run / "last.pt")
    assert torch.equal(loaded.state_dict()[weight], last_net.state_dict()[weight])
    assert not torch.equal(loaded.state_dict()[weight], best_net.state_dict()[weight])
    # A soup whose first member is a last.pt is still saved in the loadable best.pt format.
    saved = save_soup(loaded, run / "last.pt", [run / "last.pt"], tmp_path / "soup")
    assert torch.equal(load_ingredient(saved).state_dict()[weight], last_net.state_dict()[weight])


def test_a_train_fraction_keeps_the_age_mix_in_cache_order() -> None:
    from training.dataset import age_stratified_subset

    ages = [a for a in range(10) for _ in range(10)]  # ten faces of each age 0-9
    idx = np.arange(1000, 1100, dtype=np.int64)[::-1].copy()  # cache order is not age order
    half = age_stratified_subset(idx, ages, 0.5)
    assert len(half) == 50 and len(set(half.tolist())) == 50
    assert list(half) == sorted(half)  # back in cache order
    kept_ages = [ages[list(idx).index(i)] for i in half]
    assert np.bincount(kept_ages).tolist() == [5] * 10
    assert len(age_stratified_subset(idx, ages, 0.01)) == 1


def test_on_a_mixture_the_interval_temperature_weighs_each_dataset_alike() -> None:
    """A large dataset the network is sure of and a small one it is not: pooled, the large one sets
    the temperature and the small one's intervals fall short; weighted alike, the mean of the two
    datasets' coverage is 90 %."""
    from agelens.ages import softmax
    from training.evaluate import fit_temperature, interval_coverage, served_temperatures

    ages = np.arange(101, dtype=np.float64)
    rng = np.random.default_rng(0)
    n_sure, n_unsure = 3000, 300
    true = rng.integers(10, 80, n_sure + n_unsure).astype(np.float64)
    spread = np.r_[np.full(n_sure, 3.0), np.full(n_unsure, 8.0)]
    centre = true + rng.normal(0, 1, true.shape) * spread
    logits = -((ages[None] - centre[:, None]) ** 2) / (2 * 4.0**2)
    groups = np.r_[np.zeros(n_sure, dtype=np.int64), np.ones(n_unsure, dtype=np.int64)]

    def coverage(t: float) -> list[float]:
        probs = softmax(logits, t)
        return [interval_coverage(probs[groups == g], true[groups == g], ages) for g in (0, 1)]

    pooled = coverage(fit_temperature(logits, true, ages))
    alike = coverage(t_alike := fit_temperature(logits, true, ages, groups=groups))
    assert abs(np.average(pooled, weights=[n_sure, n_unsure]) - 0.9) < 0.01
    assert abs(np.mean(alike) - 0.9) < 0.01
    assert alike[1] > pooled[1] + 0.02  # the small dataset's intervals no longer fall short
    assert served_temperatures(logits, true, ages, groups).interval == t_alike
