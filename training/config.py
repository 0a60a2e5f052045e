"""Pipeline configuration, read from a TOML file (see training/configs/)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from agelens.manifest import DetectorSpec


class DataConfig(BaseModel):
    # "utkface": a folder in UTKFace naming with a committed split CSV; "csv": a CSV manifest.
    kind: str = Field("utkface", pattern="^(utkface|csv)$")
    root: Path = Path("../shared/datasets/utkface")
    split: Path = Path("training/splits/utkface.csv")
    cache: Path = Path("data/cache/utkface-64")
    crop_size: int = 64
    margin: float = 0.0
    # The detector that finds the faces of the crop cache; the exported manifest records it, and
    # the service detects with it.
    detector: DetectorSpec = DetectorSpec()
    # The manifest's and model card's `training_data` line.
    description: str = "UTKFace (Aligned & Cropped), committed split training/splits/utkface.csv"
    # Keep only this many records per split part (0 = all): the smoke config uses it.
    limit_per_split: int = 0
    # Train on several datasets of training/datasets.toml at once: name -> its share of the
    # training draws (normalised; each face of a dataset is drawn alike). Each dataset keeps its
    # registry split and cache, and the fields root, split and cache above are not used. Empty:
    # the one dataset described by those fields.
    datasets: dict[str, float] = {}
    # Train on this share of the train part only (val and test stay whole): the learning-curve
    # probe, which asks what more faces would buy (research/learning_curve).
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    workers: int = 2

    @model_validator(mode="after")
    def _known_datasets(self) -> DataConfig:
        if self.datasets:
            from training.datasets import load_registry

            unknown = sorted(set(self.datasets) - set(load_registry()))
            if unknown:
                raise ValueError(f"datasets not in training/datasets.toml: {unknown}")
            if any(w <= 0 for w in self.datasets.values()):
                raise ValueError("dataset shares must be > 0")
        return self

    def caches(self) -> dict[str, Path]:
        """Dataset name -> crop cache, in the order of the datasets' index."""
        if not self.datasets:
            return {self.kind if self.kind != "csv" else self.cache.name: self.cache}
        from training.datasets import load_registry

        registry = load_registry()
        return {name: registry[name].cache for name in self.datasets}

    def shares(self, names: list[str] | None = None) -> list[float] | None:
        """Each dataset's share of the training draws, among `names` (default: every dataset),
        in their order (None: every face alike, one dataset)."""
        weights = [self.datasets[n] for n in (self.datasets if names is None else names)]
        if len(weights) < 2:
            return None
        return [w / sum(weights) for w in weights]


class ClassifierConfig(BaseModel):
    widths: tuple[int, ...] = (48, 96, 128)
    blocks: tuple[int, ...] = (1, 1, 1)
    stem: int = 32
    dropout: float = 0.1
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    # Label loss: cross-entropy to a Gaussian around the true age (sigma in years; 0 = one-hot)
    # plus an L1 term on the expected age (weight per year of error).
    label_sigma: float = 2.0
    l1_weight: float = 0.05
    seed: int = 0
    # Exponential moving average of the weights (0 = off). The EMA model is the one validated,
    # checkpointed and exported: it averages out the last epochs' noise at no training cost.
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    # Probability that a training batch is mixed with a shuffled copy of itself (mixup, lambda
    # uniform in [0, 1]); the label loss is mixed the same way. With online teachers (born-again
    # `online`) the teachers see the same mixed images: "function matching" (Beyer et al., 2022).
    mixup: float = Field(0.0, ge=0.0, le=1.0)
    # Probability that a training face gets the look of a real upload on top of the usual jitter:
    # greyscale, blur, low resolution, a colour cast, a faded print, JPEG down to quality 30
    # (augment.photo_conditions). Online teachers see the same degraded batch.
    photo: float = Field(0.0, ge=0.0, le=1.0)
    # Warm start: the weights of this best.pt (same architecture) instead of a random start. A
    # later generation can then continue an earlier one rather than repeat its whole schedule.
    init_from: Path | None = None
    # Stochastic weight averaging (Izmailov et al., UAI 2018): after warm-up the learning rate
    # stays at `lr`, and the equal average of the weights at every epoch end, with its BatchNorm
    # statistics recomputed on the training crops, is what is validated, kept and exported. The
    # per-epoch val MAE of one run still moves by 0.02-0.05 from epoch to epoch in the last
    # twenty epochs (training/results/gpu_patient_student_*.history.jsonl);
    # an average over the trajectory does not depend on which epoch happened to land well.
    swa: bool = False

    @model_validator(mode="after")
    def _one_weight_average(self) -> ClassifierConfig:
        if self.swa and self.ema_decay > 0:
            raise ValueError("swa and ema_decay are two ways to average weights: set one")
        return self


class SpecialistConfig(ClassifierConfig):
    """A teacher of the student's architecture trained with labels on some of the mixture's
    datasets only. A network that shares its capacity between populations gives up a little on
    each; a specialist does not, so it can teach its datasets' faces (born-again
    `teacher_datasets`) better than the mixture's teachers (research/mixture/README.md)."""

    datasets: list[str] = Field(min_length=1)

    def classifier(self) -> ClassifierConfig:
        """The training settings alone (what its checkpoint records)."""
        return ClassifierConfig.model_validate(self.model_dump(exclude={"datasets"}))


class OrdinalConfig(BaseModel):
    k: int = Field(4, ge=3, le=4)
    min_gap: int = 5
    embed_dim: int = 128
    widths: tuple[int, ...] = (64, 128, 192)
    blocks: tuple[int, ...] = (1, 1, 2)
    stem: int = 32
    epochs: int = 6
    # One "epoch" samples this many sequences (each of k faces).
    sequences_per_epoch: int = 4000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    eval_sequences: int = 2000
    seed: int = 0
    # Warm start of the encoder from a registered student (.onnx) whose backbone has these
    # widths, blocks and stem: it already orders faces by age, so the pretext task on new data
    # converges in a few epochs instead of the dozens a random start needs.
    init_encoder_from: Path | None = None
    photo: float = Field(0.0, ge=0.0, le=1.0)


class DistillConfig(BaseModel):
    alpha: float = 1.0  # weight of T^2 * KL(teacher_T || student_T)
    beta: float = 1.0  # weight of the hint loss
    temperature: float = 4.0
    hint_loss: str = Field("cosine", pattern="^(cosine|l2)$")
    # The student's projection into the ordinal teacher's embedding: "random" (a fresh layer), or
    # "fit" (least squares from the starting network's features on unaugmented train crops). A
    # warm-started student otherwise takes its first hint gradients through a random layer, which
    # moves the features it started with (the linear-probe-then-fine-tune argument, Kumar et al.
    # 2022).
    hint_adapter_init: Literal["random", "fit"] = "random"


class AblationConfig(BaseModel):
    enabled: bool = True
    seeds: list[int] = [0, 1]
    epochs: int = 12
    # Loss weights of the ablation arms that switch a part on (the shipped student's own weights
    # are in [distill] and may switch a part off).
    alpha: float = 1.0
    beta: float = 1.0
    # Which arms to run (training/pipeline.py ARMS). A subset skips the teachers it does not use:
    # the ordinal-teacher experiment runs ["student_ce", "student_hint"] without the DK teacher.
    arms: list[str] = ["student_ce", "student_dk", "student_hint", "student_dk_hint"]


class InterpolateConfig(BaseModel):
    """A point between the student's warm start (`student.init_from`) and the mean of its
    fine-tunes' weights, chosen on val (training/interpolate.py)."""

    enabled: bool = False
    # The run folder the chosen network is written to (what [export] source names).
    name: str = "student_interpolated"
    # Run folders under run_dir whose best.pt weights are averaged; empty: the born-again runs.
    members: list[str] = []
    # Share of the way from the start (0) to the members' mean (1); 0 is always scored too.
    weights: list[float] = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    # Dataset -> how far its val MAE may rise above the start's. Among the weights that keep
    # every allowance, the lowest mean val MAE over the datasets wins.
    keep: dict[str, float] = {}

    @model_validator(mode="after")
    def _weights_in_range(self) -> InterpolateConfig:
        if any(not 0.0 <= w <= 1.0 for w in self.weights):
            raise ValueError("[interpolate] weights lie in [0, 1]")
        return self


class BornAgainConfig(BaseModel):
    """A second student generation distilled from earlier runs of the student's architecture.

    `teachers` names run folders under run_dir whose best.pt are averaged (mean probability).
    With `flip_average_targets`, each crop's target is the teachers' mean over the crop and its
    mirror, i.e. the flip-averaged prediction: the student learns to give in one pass what the
    teacher gives with test-time flip averaging (half the inference cost).
    """

    enabled: bool = False
    name: str = "student_gen2"
    teachers: list[str] = ["dk_teacher", "student"]
    flip_average_targets: bool = False
    epochs: int = 60
    ema_decay: float = 0.998
    # Online ("consistent") teaching: the teachers, and the ordinal teacher for the hint, run on
    # every augmented (and mixed) training batch instead of on the fixed crop and its mirror, so
    # the student is matched to the teacher on new images all along a long schedule (Beyer et al.,
    # "Knowledge distillation: A good teacher is patient and consistent", CVPR 2022).
    online: bool = False
    # One run per seed, each in `<name>_seed<seed>`; empty: one run in `<name>` with the student's seed.
    seeds: list[int] = []
    # Where offline teachers read their crops: a cache of the same faces aligned another way (for
    # a student on a new crop, taught by networks that learnt the old one). None: the student's.
    teacher_cache: Path | None = None
    # Per-teacher override of `teacher_cache`, keyed by the name in `teachers`: an ensemble whose
    # members learnt different crops (say 3.3.0 on margin 0 and a fine-tune on margin -0.1) each
    # answer on their own crop of the face, so the targets carry two views of it. Offline only:
    # online teachers answer on the student's own augmented batch, which is one crop.
    teacher_caches: dict[str, Path] = {}
    # The online counterpart: the alignment margin a teacher learnt, keyed by its name in
    # `teachers`, when it is not the student's (`[data] margin`). Such a teacher answers on the
    # student's own augmented, mixed batch resampled to its crop (augment.zoom_to_margin), so
    # consistent teaching works with an ensemble that looks at each face two ways.
    teacher_margins: dict[str, float] = {}
    # Online only: the datasets whose faces a teacher teaches, keyed by its name in `teachers`
    # (a teacher not named teaches every face). On a mixture the shipped network can teach the
    # faces of the population it learnt, and a teacher fine-tuned on the mixture the others.
    teacher_datasets: dict[str, list[str]] = {}

    @model_validator(mode="after")
    def _caches_fit_the_teachers(self) -> BornAgainConfig:
        for field in ("teacher_caches", "teacher_margins", "teacher_datasets"):
            unknown = sorted(set(getattr(self, field)) - set(self.teachers))
            if unknown:
                raise ValueError(f"{field} names teachers not in teachers: {unknown}")
        if self.teacher_margins and not self.online:
            raise ValueError("teacher_margins is for online teachers; offline ones read teacher_caches")
        if any(name.endswith(".onnx") for name in self.teacher_margins):
            # Its BN statistics would be measured on the student's crop, not the one it learnt.
            raise ValueError(
                "an .onnx teacher with another margin: rebuild it first on its own crops "
                "(python -m training.onnx_import … --cache <its cache>) and name the run"
            )
        if self.online and (self.teacher_cache is not None or self.teacher_caches):
            raise ValueError(
                "online teachers answer on the student's own crops: teacher_cache(s) need online = false"
            )
        return self


class ExportConfig(BaseModel):
    # The run folder under run_dir whose best.pt is exported ("student" = the student stage), or
    # an .onnx student (a registered version; onnx_import rebuilds its network from [student]),
    # to re-export a shipped network with other test-time views.
    source: str = "student"
    # Markdown appended to the model card (how and where this version was trained).
    card_note: str = ""
    # The model card's and manifest's one-line description. Empty: written from the config
    # (training/pipeline.describe_student); set it for a network the config did not train, such
    # as a weight soup.
    description: str = ""
    name: str = "agelens-student"
    # No default: the store is committed, and a shipped version is never replaced.
    version: str | None = None
    model_store: Path = Path("model_store")
    quantize: bool = True
    opset: int = 17
    # Horizontal-flip averaging inside the graph: better MAE for twice the compute.
    flip_tta: bool = True
    # More views inside the graph: the crop moved by these (dx, dy) whole pixels (each mirrored
    # too with flip_tta), one more pass each (export.ViewAveraged). Chosen on val by
    # research/test_time_views/test_time_views.py; empty keeps the graph at the crop and its mirror.
    tta_shifts: list[tuple[int, int]] = []
    # Store weights as float16 (cast back to float32 at load): half the file, same compute.
    fp16_weights: bool = True


class PipelineConfig(BaseModel):
    run_dir: Path = Path("runs/default")
    data: DataConfig = DataConfig()
    dk_teacher: ClassifierConfig = ClassifierConfig()
    student: ClassifierConfig = ClassifierConfig()
    ordinal: OrdinalConfig = OrdinalConfig()
    distill: DistillConfig = DistillConfig()
    ablation: AblationConfig = AblationConfig()
    born_again: BornAgainConfig = BornAgainConfig()
    # Specialist teachers by name, each trained into run_dir/<name> by the `specialists` stage;
    # born-again `teachers` name them like any other run folder.
    specialists: dict[str, SpecialistConfig] = {}
    interpolate: InterpolateConfig = InterpolateConfig()
    export: ExportConfig = ExportConfig()
    threads: int = 0  # torch intra-op threads; 0 = all cores
    # Read every teacher (dk_teacher, ordinal_teacher, born-again members) from this earlier run
    # folder instead of run_dir: a later experiment reuses a run's teachers without training them.
    teacher_dir: Path | None = None
    # "auto": the CUDA GPU when torch sees one, else the CPU. The same code runs on both.
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    # The stages a plain `agelens train --config` runs, when the recipe is not every stage (the
    # mixture recipe's student is the online `born_again` stage, so it skips `student`).
    stages: list[str] | None = None

    @model_validator(mode="after")
    def _specialists_learn_the_mixture(self) -> PipelineConfig:
        for name, spec in self.specialists.items():
            if name in ("dk_teacher", "ordinal_teacher"):
                raise ValueError(f"specialist {name!r}: that run folder belongs to another stage")
            unknown = sorted(set(spec.datasets) - set(self.data.datasets))
            if unknown:
                raise ValueError(f"specialist {name!r} names datasets not in [data] datasets: {unknown}")
        return self

    @model_validator(mode="after")
    def _born_again_averages_one_way(self) -> PipelineConfig:
        # The born-again runs take the student's settings with born_again.ema_decay on top: with
        # [student] swa, that would ask for both averages (BornAgainConfig's default EMA is on).
        if self.born_again.enabled and self.student.swa and self.born_again.ema_decay > 0:
            raise ValueError("[student] swa is set: set [born_again] ema_decay = 0 (one weight average)")
        return self

    @property
    def teachers_root(self) -> Path:
        return self.teacher_dir or self.run_dir

    @classmethod
    def load(cls, path: Path, overrides: list[str] | None = None) -> PipelineConfig:
        """A TOML config, or the JSON that `training/parallel.py` writes with its chosen epochs,
        with `key.sub=value` overrides on top (see `apply_overrides`)."""
        if path.suffix == ".json":
            cfg = cls.model_validate_json(path.read_text())
        else:
            with open(path, "rb") as fh:
                cfg = cls.model_validate(tomllib.load(fh))
        return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: PipelineConfig, overrides: list[str]) -> PipelineConfig:
    """Set dotted keys from the command line: `dk_teacher.seed=1`, `run_dir="runs/x"`,
    `born_again.teachers=["a", "b"]`. The value is read as a TOML value, and a bare word that is
    not one (`run_dir=runs/x`) as a string. Everything is validated again, so a misspelt key or a
    wrong type is refused rather than ignored: one config file then serves several seeds or
    variants of a run without a near-copy of it per variant."""
    if not overrides:
        return cfg
    data = cfg.model_dump(mode="json")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {item!r}: no section {part!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"override {item!r}: no setting {leaf!r}")
        node[leaf] = value
    return PipelineConfig.model_validate(data)
