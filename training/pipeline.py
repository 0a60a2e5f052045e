"""The whole training pipeline from one config file, resumable stage by stage.

    prepare -> dk_teacher -> specialists -> ordinal_teacher -> student (distilled)
            -> born_again -> interpolate -> ablation -> export

Every stage writes its outputs under `run_dir`; a stage whose result file exists is skipped, and
the training stages resume from their last epoch checkpoint, so re-running the same command after
an interruption continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from agelens.ages import softmax
from agelens.manifest import AlignmentSpec
from training.augment import ZoomedView, normalised_batches
from training.classifier import (
    OnlineTeachers,
    TeacherTargets,
    compute_teacher_targets,
    load_classifier,
    read_history,
    train_classifier,
)
from training.config import ClassifierConfig, DistillConfig, OrdinalConfig, PipelineConfig
from training.data import read_csv_manifest, utkface_records
from training.dataset import AGES, NORM, CachedData, load_data, load_mixture
from training.datasets import ensure_split, load_registry
from training.device import module_device, resolve_device
from training.evaluate import compute_metrics, mean_std, predict_logits
from training.export import export_classifier
from training.interpolate import run_interpolation
from training.models import AgeClassifier, OrdinalTeacher, count_parameters
from training.onnx_import import student_from_onnx
from training.ordinal import load_ordinal_teacher, order_accuracy, train_ordinal_teacher
from training.prepare import build_cache, cache_settings

log = logging.getLogger("agelens.train")
STAGES = (
    "prepare",
    "dk_teacher",
    "specialists",
    "ordinal_teacher",
    "student",
    "born_again",
    "interpolate",
    "ablation",
    "export",
)
TEACHER_STAGES = ("dk_teacher", "specialists", "ordinal_teacher")


def teacher_stages_refusal(cfg: PipelineConfig, stages: list[str]) -> str | None:
    """Why these stages cannot run with this config, or None: a config that reads its teachers
    from another run (`teacher_dir`) must not train them."""
    if cfg.teacher_dir is not None and set(TEACHER_STAGES) & set(stages):
        return (
            f"teacher_dir is set: the teachers are read from {cfg.teacher_dir}, not trained; "
            "run the stages after them (--stages born_again,ablation,export)"
        )
    return None


def default_stages(cfg: PipelineConfig) -> list[str]:
    """Every stage. A config that reads its teachers from another run (`teacher_dir`) is a later
    student generation: the teachers and the first-generation student belong to that run."""
    if cfg.stages is not None:
        unknown = set(cfg.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages in the config: {sorted(unknown)}")
        return [s for s in STAGES if s in cfg.stages]
    if cfg.teacher_dir is None:
        return list(STAGES)
    return [s for s in STAGES if s not in (*TEACHER_STAGES, "student")]


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def limit_records(records: list, per_split: int) -> list:
    """An evenly strided subset of each part: the split file is sorted by name, i.e. by age
    string, so taking the first N would give a handful of ages only."""
    out = []
    for part in ("train", "val", "test"):
        rows = [r for r in records if r.split == part]
        step = max(1, len(rows) // per_split)
        out += rows[::step][:per_split]
    return out


def stage_prepare(cfg: PipelineConfig) -> None:
    d = cfg.data
    spec = AlignmentSpec(crop_size=d.crop_size, margin=d.margin)
    if d.datasets:
        registry = load_registry()
        for name in d.datasets:
            entry = registry[name]
            prepare_cache(ensure_split(entry), entry.root, entry.cache, spec, cfg)
        return
    records = utkface_records(d.root, d.split) if d.kind == "utkface" else read_csv_manifest(d.split)
    prepare_cache(records, d.root, d.cache, spec, cfg)


def prepare_cache(records: list, root: Path, cache: Path, spec: AlignmentSpec, cfg: PipelineConfig) -> None:
    """Build one dataset's crop cache, unless it exists with these settings."""
    d = cfg.data
    if (cache / "crops.npy").exists():
        if cache_settings(cache) == (spec, d.detector):
            log.info("prepare: cache %s is up to date", cache)
            return
        log.info("prepare: cache %s was built with other alignment or detector settings; rebuilding", cache)
    if d.limit_per_split:
        records = limit_records(records, d.limit_per_split)
    stats = build_cache(records, root, cache, spec, d.detector, workers=d.workers)
    log.info(
        "prepare: %s detection rate %.4f (%d/%d)",
        cache,
        stats["detection_rate"],
        stats["detected"],
        stats["images"],
    )


def test_report(model: AgeClassifier, data: CachedData) -> dict:
    """Test metrics of a trained network (one pass), overall and, for a mixture, per dataset."""
    logits = predict_logits(model, data.test.crops, NORM)
    probs = softmax(logits)
    rep = compute_metrics(probs, data.test.ages.numpy(), AGES).model_dump()
    if len(data.datasets) > 1:
        source = data.test.source.numpy()
        rep["by_dataset"] = {
            name: compute_metrics(probs[source == i], data.test.ages.numpy()[source == i], AGES).model_dump()
            for i, name in enumerate(data.datasets)
        }
    return rep


def run_classifier(
    cfg: ClassifierConfig,
    data: CachedData,
    out: Path,
    targets: TeacherTargets | None = None,
    distill: DistillConfig | None = None,
    device: torch.device | None = None,
    online: OnlineTeachers | None = None,
    shares: list[float] | None = None,
) -> dict:
    """Train (or resume) one classifier and return its test report (cached in result.json)."""
    result = out / "result.json"
    if result.exists():
        return json.loads(result.read_text())
    t0 = time.time()
    model = train_classifier(cfg, data, NORM, out, targets, distill, device, online, shares)
    rep = test_report(model, data)
    rep["train_seconds"] = round(time.time() - t0, 1)
    _write_json(result, rep)
    return rep


def stage_dk_teacher(cfg: PipelineConfig, data: CachedData) -> dict:
    rep = run_classifier(
        cfg.dk_teacher,
        data,
        cfg.run_dir / "dk_teacher",
        device=resolve_device(cfg.device),
        shares=cfg.data.shares(),
    )
    log.info("dark-knowledge teacher: test MAE %.3f CS@5 %.3f", rep["mae"], rep["cs5"])
    return rep


def stage_specialists(cfg: PipelineConfig, data: CachedData) -> dict:
    """Each specialist teacher, trained on its datasets' faces only, drawn by their [data] shares."""
    reports = {}
    for name, spec in cfg.specialists.items():
        rep = run_classifier(
            spec.classifier(),
            data.only(spec.datasets),
            cfg.run_dir / name,
            device=resolve_device(cfg.device),
            shares=cfg.data.shares(spec.datasets),
        )
        log.info("specialist %s (%s): test MAE %.3f CS@5 %.3f", name, spec.datasets, rep["mae"], rep["cs5"])
        reports[name] = rep
    return reports


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """Linear read-out of age from the ordinal embedding (how much age the embedding carries)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = (train_x - mu) / sd
    a1 = np.hstack([a, np.ones((len(a), 1))])
    w = np.linalg.solve(a1.T @ a1 + lam * np.eye(a1.shape[1]), a1.T @ train_y)
    b = (test_x - mu) / sd
    return np.hstack([b, np.ones((len(b), 1))]) @ w


def ordinal_report(model: OrdinalTeacher, data: CachedData, cfg: OrdinalConfig) -> dict:
    """Order-recovery accuracy on val and test sequences, and a linear read-out of age."""
    device = module_device(model)
    rep: dict = {
        "val": order_accuracy(model, data.val, cfg, NORM, seed=1),
        "test": order_accuracy(model, data.test, cfg, NORM, seed=2),
        "k": cfg.k,
        "min_gap": cfg.min_gap,
        "parameters": count_parameters(model),
    }
    with torch.no_grad():

        def emb(crops: torch.Tensor) -> np.ndarray:
            # The same normalisation as training and the manifest: never a hand-written copy.
            return torch.cat(
                [model.embed_faces(x).cpu() for x in normalised_batches(crops, NORM, device)]
            ).numpy()

        pred = ridge_probe(
            emb(data.train.crops), data.train.ages.numpy().astype(np.float64), emb(data.test.crops)
        )
    err = np.abs(pred - data.test.ages.numpy())
    rep["linear_probe_test_mae"] = round(float(err.mean()), 4)
    rep["linear_probe_test_cs5"] = round(float((err <= 5).mean()), 4)
    return rep


def stage_ordinal(cfg: PipelineConfig, data: CachedData) -> dict:
    out = cfg.run_dir / "ordinal_teacher"
    result = out / "result.json"
    if result.exists():
        return json.loads(result.read_text())
    t0 = time.time()
    device = resolve_device(cfg.device)
    model = train_ordinal_teacher(cfg.ordinal, data.train, data.val, NORM, out, device).to(device)
    rep = ordinal_report(model, data, cfg.ordinal)
    rep["train_seconds"] = round(time.time() - t0, 1)
    _write_json(result, rep)
    log.info(
        "ordinal teacher: test order accuracy %.3f (chance %.3f); linear probe MAE %.2f",
        rep["test"]["accuracy"],
        rep["test"]["chance"],
        rep["linear_probe_test_mae"],
    )
    return rep


def load_teachers(
    cfg: PipelineConfig, need_dk: bool, need_ord: bool
) -> tuple[AgeClassifier | None, OrdinalTeacher | None]:
    """The dark-knowledge and ordinal teachers from `cfg.teachers_root`, on the training device."""
    device = resolve_device(cfg.device)
    root = cfg.teachers_root
    dk = (
        load_classifier(root / "dk_teacher" / "best.pt").to(device, memory_format=torch.channels_last)
        if need_dk
        else None
    )
    ordinal = load_ordinal_teacher(root / "ordinal_teacher" / "best.pt").to(device) if need_ord else None
    return dk, ordinal


def teacher_targets(cfg: PipelineConfig, data: CachedData, need_dk: bool, need_ord: bool) -> TeacherTargets:
    dk, ordinal = load_teachers(cfg, need_dk, need_ord)
    return compute_teacher_targets(data.train.crops, NORM, dk, ordinal)


def stage_student(cfg: PipelineConfig, data: CachedData, targets: TeacherTargets) -> dict:
    rep = run_classifier(
        cfg.student,
        data,
        cfg.run_dir / "student",
        targets,
        cfg.distill,
        resolve_device(cfg.device),
        shares=cfg.data.shares(),
    )
    log.info("distilled student: test MAE %.3f CS@5 %.3f", rep["mae"], rep["cs5"])
    return rep


def ensemble_teacher_logits(
    members: list[tuple[AgeClassifier, torch.Tensor]], flip_average: bool = False
) -> torch.Tensor:
    """Offline targets (crop and mirror) of an ensemble: log of the members' mean probability.

    Each member comes with the train crops it answers on: the same faces, in the student's row
    order, aligned as that member learnt them. Averaging probabilities rather than logits keeps
    each member's uncertainty; the log of the mean is a valid set of logits for the
    temperature-softened KL term. With `flip_average`, both views get the mean over crop and
    mirror (the teacher's flip-averaged answer).
    """
    probs = []
    for m, crops in members:
        t = compute_teacher_targets(crops, NORM, m.to(memory_format=torch.channels_last), None)
        assert t.dk_logits is not None
        probs.append(t.dk_logits.softmax(-1))
    mean = torch.stack(probs).mean(0)  # (N, 2, C)
    if flip_average:
        mean = mean.mean(1, keepdim=True).expand_as(mean).contiguous()
    return mean.clamp_min(1e-12).log()


def born_again_runs(cfg: PipelineConfig) -> list[tuple[str, int]]:
    """(run folder under run_dir, seed) of each born-again run."""
    ba = cfg.born_again
    if not ba.seeds:
        return [(ba.name, cfg.student.seed)]
    return [(f"{ba.name}_seed{seed}", seed) for seed in ba.seeds]


def shipped_student(cfg: PipelineConfig, path: Path, data: CachedData) -> AgeClassifier:
    """A registered ONNX student rebuilt as `[student]`'s network (training/onnx_import.py), its
    BN statistics taken on `data`'s train crops."""
    return student_from_onnx(path, cfg.student, data.train.crops, NORM)


def load_member(cfg: PipelineConfig, name: str, data: CachedData) -> AgeClassifier:
    """A born-again teacher: a run folder under the teachers' root, or a shipped ONNX file
    (`shipped_student`; `data` gives it its BN statistics)."""
    if name.endswith(".onnx"):
        return shipped_student(cfg, Path(name), data)
    return load_classifier(cfg.teachers_root / name / "best.pt")


def same_faces(data: CachedData, other: CachedData) -> CachedData:
    """`other` (the same faces aligned another way), checked to hold `data`'s faces in the same
    order: offline targets are indexed by the student's train rows."""
    for name in ("train", "val", "test"):
        mine, theirs = data.part(name).records, other.part(name).records
        if [r.filename for r in mine] != [r.filename for r in theirs]:
            raise ValueError(f"the teacher cache's {name} faces differ from the student's")
    return other


def teacher_crops(cfg: PipelineConfig, data: CachedData) -> dict[str, CachedData]:
    """The crops each born-again teacher answers on: its entry in `teacher_caches`, else
    `teacher_cache`, else the student's; every cache is checked to hold the student's faces in
    the student's order, and each is loaded once however many teachers share it."""
    ba = cfg.born_again
    loaded: dict[Path, CachedData] = {}
    out: dict[str, CachedData] = {}
    for name in ba.teachers:
        cache = ba.teacher_caches.get(name, ba.teacher_cache)
        if cache is None:
            out[name] = data
            continue
        if cache not in loaded:
            loaded[cache] = same_faces(data, load_data(cache))
        out[name] = loaded[cache]
    return out


def stage_born_again(cfg: PipelineConfig, data: CachedData) -> dict:
    """Second student generation, taught by earlier runs of the student (see BornAgainConfig)."""
    ba = cfg.born_again
    device = resolve_device(cfg.device)
    member_data = teacher_crops(cfg, data)
    # Each teacher with the crops it answers on.
    members = [(load_member(cfg, name, member_data[name]), member_data[name]) for name in ba.teachers]
    test_probs = np.mean([softmax(predict_logits(m, d.test.crops, NORM)) for m, d in members], axis=0)
    teacher_rep = compute_metrics(test_probs, data.test.ages.numpy(), AGES)
    log.info("born-again teachers %s: test MAE %.3f CS@5 %.3f", ba.teachers, teacher_rep.mae, teacher_rep.cs5)
    online: OnlineTeachers | None = None
    targets = TeacherTargets()
    if ba.online:
        _, ordinal = load_teachers(cfg, False, cfg.distill.beta > 0)
        viewed = [
            ZoomedView(m, cfg.data.margin, ba.teacher_margins[n]) if n in ba.teacher_margins else m
            for n, (m, _) in zip(ba.teachers, members, strict=True)
        ]
        routes = [
            [data.datasets.index(d) for d in ba.teacher_datasets[n] if d in data.datasets]
            if n in ba.teacher_datasets
            else None
            for n in ba.teachers
        ]
        online = OnlineTeachers(
            [m.to(device, memory_format=torch.channels_last) for m in viewed],
            ordinal,
            routes if any(r is not None for r in routes) else None,
        )
    else:
        targets.dk_logits = ensemble_teacher_logits(
            [(m, d.train.crops) for m, d in members], ba.flip_average_targets
        )
        if cfg.distill.beta > 0:
            targets.ordinal_embed = teacher_targets(cfg, data, False, True).ordinal_embed
    reports: dict[str, dict] = {}
    for name, seed in born_again_runs(cfg):
        scfg = cfg.student.model_copy(update={"epochs": ba.epochs, "ema_decay": ba.ema_decay, "seed": seed})
        out = cfg.run_dir / name
        rep = run_classifier(scfg, data, out, targets, cfg.distill, device, online, cfg.data.shares())
        rep["teacher_ensemble_test"] = {"mae": teacher_rep.mae, "cs5": teacher_rep.cs5}
        rep["best_val_mae"] = best_val_mae(out / "history.jsonl")
        _write_json(out / "result.json", rep)
        log.info("born-again student %s: test MAE %.3f CS@5 %.3f", name, rep["mae"], rep["cs5"])
        reports[name] = rep
    return reports if ba.seeds else reports[ba.name]


def stage_interpolate(cfg: PipelineConfig, data: CachedData) -> dict:
    """The network between the student's warm start and its fine-tunes' mean, chosen on val."""
    ip = cfg.interpolate
    if cfg.student.init_from is None:
        raise ValueError("[interpolate] needs the student's warm start: set [student] init_from")
    members = [cfg.run_dir / m for m in ip.members] or [cfg.run_dir / n for n, _ in born_again_runs(cfg)]
    start = (
        shipped_student(cfg, cfg.student.init_from, data)
        if cfg.student.init_from.suffix == ".onnx"
        else load_classifier(cfg.student.init_from)
    )
    model, report = run_interpolation(ip, start, members, data, cfg.run_dir / ip.name)
    report["test"] = test_report(model, data)
    _write_json(cfg.run_dir / ip.name / "result.json", report)
    return report


def best_val_mae(history: Path) -> float:
    """The best val MAE of a classifier run (the epoch its best.pt holds)."""
    return round(min(r["val_mae"] for r in read_history(history)), 4)


ARMS = {
    "student_ce": (0.0, 0.0),
    "student_dk": (1.0, 0.0),
    "student_hint": (0.0, 1.0),
    "student_dk_hint": (1.0, 1.0),
}


def stage_ablation(cfg: PipelineConfig, data: CachedData, targets: TeacherTargets) -> dict:
    ab = cfg.ablation
    results: dict[str, dict] = {}
    unknown = set(ab.arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown ablation arms {sorted(unknown)}; known: {list(ARMS)}")
    for arm in ab.arms:
        use_a, use_b = ARMS[arm]
        runs = []
        for seed in ab.seeds:
            scfg = cfg.student.model_copy(update={"epochs": ab.epochs, "seed": seed})
            dcfg = cfg.distill.model_copy(update={"alpha": ab.alpha * use_a, "beta": ab.beta * use_b})
            out_dir = cfg.run_dir / "ablation" / f"{arm}_seed{seed}"
            rep = run_classifier(
                scfg, data, out_dir, targets, dcfg, resolve_device(cfg.device), shares=cfg.data.shares()
            )
            # The arms are compared on val (choices are made there, never on test).
            rep["best_val_mae"] = best_val_mae(out_dir / "history.jsonl")
            runs.append(rep)
            log.info("ablation %s seed %d: test MAE %.3f", arm, seed, rep["mae"])
        mae_mean, mae_std = mean_std([r["mae"] for r in runs])
        cs5_mean, cs5_std = mean_std([r["cs5"] for r in runs])
        val_mean, val_std = mean_std([r["best_val_mae"] for r in runs])
        bands = {
            b["name"]: float(
                np.mean([next(x["mae"] for x in r["bands"] if x["name"] == b["name"]) for r in runs])
            )
            for b in runs[0]["bands"]
        }
        results[arm] = {
            "mae_mean": mae_mean,
            "mae_std": mae_std,
            "cs5_mean": cs5_mean,
            "cs5_std": cs5_std,
            "val_mae_mean": val_mean,
            "val_mae_std": val_std,
            "band_mae_mean": bands,
            "seeds": ab.seeds,
            "epochs": ab.epochs,
            "runs": [{"mae": r["mae"], "cs5": r["cs5"], "best_val_mae": r["best_val_mae"]} for r in runs],
        }
    out = {
        "arms": results,
        "distill": cfg.distill.model_dump(),
        "student": cfg.student.model_dump(mode="json"),
    }
    _write_json(cfg.run_dir / "ablation" / "ablation.json", out)
    return out


def describe_student(cfg: PipelineConfig) -> str:
    d, s = cfg.distill, cfg.student
    ba = cfg.born_again
    source = "" if cfg.export.source == "student" else f", run `{cfg.export.source}`"
    mixup = f", mixup p={s.mixup}" if s.mixup > 0 else ""
    born_again = ba.enabled and cfg.export.source.startswith(ba.name)
    if born_again:
        how = "run on every augmented batch" if ba.online else "targets on the fixed crops"
        parts = [
            f"Compact student, second generation ({ba.epochs} epochs{mixup}{source})",
            f"distilled from the ensemble of {len(ba.teachers)} earlier networks of its architecture",
            f"({how}; alpha={d.alpha}, T={d.temperature})",
        ]
    else:
        parts = [f"Compact student ({s.epochs} epochs{mixup}{source})"]
    if d.alpha > 0 and not born_again:
        parts.append(f"distilled from the dark-knowledge teacher (alpha={d.alpha}, T={d.temperature})")
    if d.beta > 0:
        parts.append(f"with the ordinal teacher's {d.hint_loss} hint (beta={d.beta})")
    else:
        parts.append("(ordinal hint off: it did not help on val, see training/README.md)")
    return " ".join(parts)


def export_description(cfg: PipelineConfig) -> str:
    """The registered model's description: the config's own words when it names a network it did
    not train (a weight soup), else what the config's training settings say."""
    return cfg.export.description.strip() or describe_student(cfg)


def run_pipeline(cfg: PipelineConfig, stages: list[str] | None = None) -> None:
    stages = stages or default_stages(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    refusal = teacher_stages_refusal(cfg, stages)
    if refusal:
        raise ValueError(refusal)
    if "prepare" in stages:
        stage_prepare(cfg)
    data = load_mixture(cfg.data.caches(), cfg.data.limit_per_split, cfg.data.train_fraction)
    log.info("data: train %d, val %d, test %d", len(data.train), len(data.val), len(data.test))
    summary: dict = {}
    if "dk_teacher" in stages:
        summary["dk_teacher"] = stage_dk_teacher(cfg, data)
    if "specialists" in stages and cfg.specialists:
        summary["specialists"] = stage_specialists(cfg, data)
    if "ordinal_teacher" in stages:
        summary["ordinal_teacher"] = stage_ordinal(cfg, data)
    targets = None
    if {"student", "ablation"} & set(stages):
        # Load a teacher only if some stage to run uses it.
        arms = [ARMS[a] for a in cfg.ablation.arms] if "ablation" in stages and cfg.ablation.enabled else []
        uses = arms + ([(cfg.distill.alpha, cfg.distill.beta)] if "student" in stages else [])
        targets = teacher_targets(cfg, data, any(a > 0 for a, _ in uses), any(b > 0 for _, b in uses))
    if "student" in stages:
        assert targets is not None
        summary["student"] = stage_student(cfg, data, targets)
    if "born_again" in stages and cfg.born_again.enabled:
        summary["born_again"] = stage_born_again(cfg, data)
    if "interpolate" in stages and cfg.interpolate.enabled:
        summary["interpolate"] = stage_interpolate(cfg, data)
    if "ablation" in stages and cfg.ablation.enabled:
        assert targets is not None
        summary["ablation"] = stage_ablation(cfg, data, targets)
    if "export" in stages:
        final = cfg.export.source
        if final.endswith(".onnx"):
            model = shipped_student(cfg, Path(final), data)
        else:
            model = load_classifier(cfg.run_dir / final / "best.pt")
        note = f"\n## Training\n{cfg.export.card_note.strip()}\n" if cfg.export.card_note.strip() else ""
        if not cfg.export.version:
            raise ValueError("set [export] version (a new one: a registered version is never replaced)")
        export_classifier(cfg, model, data, cfg.export.version, export_description(cfg), extra_card=note)
    summary["seconds"] = round(time.time() - t0, 1)
    _write_json(cfg.run_dir / "summary.json", summary)
    log.info("pipeline finished in %.1f min", summary["seconds"] / 60)
