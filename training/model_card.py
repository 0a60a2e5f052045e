"""Render MODEL_CARD.md from measured metrics (never hand-edited numbers)."""

from __future__ import annotations

from agelens.manifest import AgeBand, AlignmentSpec, Int8Variant, Metrics
from training.dataset_report import DatasetReport
from training.datasets import DatasetEntry

SPLIT_RULES = {
    "hash": "70/10/20 by filename hash; byte-identical duplicates kept in one part, duplicate groups "
    "with conflicting ages dropped",
    "stratified": "about 70/10/20 within each age band and gender; near-identical images (perceptual "
    "hash) kept in one part",
}


def _table(rows: list[AgeBand], head: str) -> str:
    # The signed error shows the pull toward the middle ages that MAE alone hides.
    signed = all(b.bias is not None for b in rows)
    cols = ["n", "MAE (years)", "CS@5", *(["mean signed error (years)"] if signed else [])]
    lines = [f"| {head} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for b in rows:
        cells = [str(b.n), f"{b.mae:.2f}", f"{b.cs5:.3f}", *([f"{b.bias:+.2f}"] if signed else [])]
        lines.append(f"| {b.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _estimate_line(estimate_temperature: float, metrics: Metrics) -> str:
    if estimate_temperature == 1.0:
        return "The age itself is the expectation at temperature 1."
    ex = metrics.extra
    return (
        "The age is the mean of that calibrated distribution, the one the service returns: chosen "
        f"on val (MAE {ex.get('val_mae_calibrated_softmax', float('nan')):.3f} against "
        f"{ex.get('val_mae_raw_softmax', float('nan')):.3f} at temperature 1; on test "
        f"{metrics.mae:.3f} against {ex.get('test_mae_raw_softmax', float('nan')):.3f})."
    )


CALIBRATION_ON_A_MIXTURE = (
    " on average over the datasets, each weighing the same (pooled, the largest dataset would set"
    " it and the others' intervals would be the short ones)"
)

PER_DATASET = (
    "Each dataset's test split, as the service answers: the age at the estimate temperature, the "
    "interval at the calibrated one."
)


def data_section(entries: list[DatasetEntry]) -> str:
    """Each training dataset, its split and its terms, from the registry."""
    lines = []
    for e in entries:
        lines.append(
            f"- **{e.title}** (`{e.name}`): committed split `{e.split}` ({SPLIT_RULES[e.split_rule]}). "
            f"Terms: {e.terms}"
        )
    return "\n".join(lines)


def test_section(reports: dict[str, DatasetReport]) -> str:
    """Per dataset: the served metrics, the age bands with their signed error, and the groups."""
    out = []
    for r in reports.values():
        m = r.metrics
        out.append(f"### {r.title} (n = {m.n})")
        out.append(
            f"- MAE **{m.mae:.2f}** years; CS@5 **{m.cs5:.3f}**; the 90 % interval covers "
            f"{m.extra.get('coverage90_calibrated', float('nan')):.1%} of the test faces\n"
        )
        out.append(_table(m.bands, "Age band") + "\n")
        for key, rows in r.groups.items():
            out.append(_table(rows, f"{key.capitalize()} ({r.dataset} label)") + "\n")
    return "\n".join(out)


def render_card(
    name: str,
    version: str,
    description: str,
    metrics: Metrics,
    demo: dict[str, list[AgeBand]],
    parameters: int,
    notes: dict[str, str | float | int],
    temperature: float,
    spec: AlignmentSpec,
    extra: str = "",
    estimate_temperature: float = 1.0,
    int8_variant: Int8Variant | None = None,
    datasets: list[DatasetEntry] | None = None,
    by_dataset: dict[str, DatasetReport] | None = None,
) -> str:
    int8 = ""
    if int8_variant is not None:
        q = int8_variant
        int8 = (
            f"- int8 variant `{q.file}`: {q.bytes / 1024:.0f} KiB, test MAE {q.test_mae:.2f}, CS@5 "
            f"{q.test_cs5:.3f} (static QDQ quantisation, per-channel 7-bit weights, calibrated on 512 "
            f"val crops); its 90 % interval covers {q.coverage90_calibrated:.1%} of test faces\n"
        )
    calibration = (CALIBRATION_ON_A_MIXTURE if by_dataset else "") + ". "
    calibration += _estimate_line(estimate_temperature, metrics)
    return f"""# Model card: {name} {version}

{description}.

## Intended use
Estimating the apparent age of faces in photos, self-hosted, for product features such as
age-appropriate defaults, analytics over groups, or flagging content for human review. The output
is a distribution over ages 0-100 (100 = 100+), its mean, its spread and a 90 % interval.

**Not for**: deciding anything about a person on its own (access to age-restricted goods or
services, law enforcement, employment, insurance). Errors of 5+ years are common (see CS@5 below)
and are larger for some groups.

## Data and terms
{data_section(datasets) if datasets else ""}

The weights are derived from these images and inherit their terms: **non-commercial research use
only**. Age labels are annotations of unknown precision (UTKFace's were estimated by the DEX
algorithm and checked by a person), so they are apparent, not verified chronological, ages.

## Model
- Input: {spec.crop_size}x{spec.crop_size} RGB face crop, aligned by a similarity transform of
  BlazeFace keypoints (eyes, nose, mouth) to the template in `manifest.json`, normalised as it says.
- Parameters: {parameters:,}; compute: {int(notes.get("flops_macs", 0)) / 1e6:.1f} M
  multiply-accumulates per face.
- ONNX file: {int(notes.get("onnx_bytes", 0)) / 1024:.0f} KiB (opset 17, dynamic batch); weights stored as
  {notes.get("weights_storage", "float32")}.
- Test-time augmentation: {notes.get("test_time_augmentation", "none")}.
- Latency: measured by `benchmarks/model_latency.py`, output in
  `benchmarks/results/model_latency.json` (one thread, batch 1 and 8).
{int8}- Uncertainty: softmax temperature {temperature:.3f}, fitted on val so the 90 % interval covers
  90 % of val faces{calibration}

## Test metrics
{PER_DATASET if by_dataset else ""}
Pooled over the test splits (n = {metrics.n}): MAE **{metrics.mae:.2f}**, CS@5 **{metrics.cs5:.3f}**,
90 % interval coverage {metrics.extra.get("coverage90_calibrated", float("nan")):.3f}
({metrics.extra.get("coverage90_uncalibrated", float("nan")):.3f} before calibration).

{test_section(by_dataset) if by_dataset else _table(metrics.bands, "Age band")}
## Known limits
- The training faces are mostly White (UTKFace) and East Asian (All-Age-Faces where used) and
  few are over 80: estimates for other groups and the oldest are least reliable.
- Estimates are pulled toward the ages most training faces have: the mean signed error by age
  band (above) says by how much the oldest are estimated too young and teenagers too old.
- Apparent age: make-up, lighting, blur and expression move estimates.
- Faces smaller than about 40 px, strongly rotated (> 45 degrees) or occluded may not be detected.
{extra}"""
