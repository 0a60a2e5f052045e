"""Export a trained classifier to ONNX, check parity with onnxruntime, measure the file that
ships, and register it in the model store with its manifest and model card."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from agelens.age_model import OnnxRunner
from agelens.ages import softmax
from agelens.manifest import (
    MANIFEST_FILENAME,
    AlignmentSpec,
    DetectorSpec,
    Int8Variant,
    Metrics,
    ModelManifest,
    Normalisation,
    sha256_file,
)
from training.augment import normalise, to_float
from training.config import PipelineConfig
from training.dataset import AGES, NORM, CachedData
from training.dataset_report import reports_by_dataset
from training.datasets import load_registry
from training.evaluate import (
    demographic_metrics,
    interval_coverage,
    mae_at_temperature,
    served_metrics,
    served_temperatures,
)
from training.model_card import render_card
from training.models import conv_flops, count_parameters

log = logging.getLogger(__name__)


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """`x` (N, C, S, S) moved `dx` pixels right and `dy` down, the border replicated. Whole pixels
    only: nothing is resampled, so no fine texture (wrinkles) is smoothed away. Exports as one Pad
    and one Slice."""
    p = max(abs(dx), abs(dy))
    if p == 0:
        return x
    size_y, size_x = x.shape[-2], x.shape[-1]
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    return padded[..., p - dy : p - dy + size_y, p - dx : p - dx + size_x]


def _movement(dx: int, dy: int) -> str:
    """'moved 1 px left and 1 px down', for a manifest a person reads."""
    parts = [f"{abs(d)} px {word[d > 0]}" for d, word in ((dx, ("left", "right")), (dy, ("up", "down"))) if d]
    return "moved " + " and ".join(parts)


class ViewAveraged(nn.Module):
    """Test-time augmentation inside the graph: the network's probabilities averaged over several
    views of the crop, so every consumer of the ONNX file (the service, evaluate_onnx, the
    benchmarks) gets the same answer without knowing the views. Output stays
    log-probability-like ("logits"), so consumers apply softmax as before.

    The views are the crop and the crop moved by each of `shifts` (whole pixels, `shifted`), each
    with its mirror image when `flip`; one pass of the network each. The first pass is the plain
    crop, which onnx_import.folded_weights relies on. Measured: the mirror took the 1.0.0
    student's test MAE from 5.51 to 5.38; a one-pixel shift with its mirror took 3.4.0's val MAE
    from 4.783 to about 4.74 (research/test_time_views/test_time_views.py, training/README.md).
    """

    def __init__(self, model: nn.Module, flip: bool = True, shifts: tuple[tuple[int, int], ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.flip = flip
        self.shifts = tuple((int(dx), int(dy)) for dx, dy in shifts)

    @property
    def passes(self) -> int:
        return (1 + len(self.shifts)) * (2 if self.flip else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crops = [x] + [shifted(x, dx, dy) for dx, dy in self.shifts]
        views = [v for c in crops for v in ((c, torch.flip(c, dims=[3])) if self.flip else (c,))]
        p = torch.softmax(self.model(views[0]), dim=1)
        for view in views[1:]:
            p = p + torch.softmax(self.model(view), dim=1)
        return torch.log(p / self.passes + 1e-12)

    def describe(self) -> str:
        """The manifest's `test_time_augmentation` note."""
        if self.passes == 1:
            return "none"
        if not self.shifts:
            return "horizontal flip, probabilities averaged in the graph"
        moved = ", ".join(_movement(dx, dy) for dx, dy in self.shifts)
        mirror = ", each with its horizontal mirror" if self.flip else ""
        return (
            f"the crop and the crop {moved}{mirror}: {self.passes} passes, "
            "probabilities averaged in the graph"
        )


def export_onnx(model: nn.Module, path: Path, crop_size: int, opset: int = 17) -> None:
    """Export with a dynamic batch axis; input 'input' (N,3,S,S) float32, output 'logits' (N,C)."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, crop_size, crop_size)
    # The TorchScript exporter gives a compact, fully folded graph for this plain CNN.
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)))


def store_weights_fp16(src: Path, dst: Path) -> int:
    """Rewrite an fp32 ONNX file so its weights are *stored* in float16 and cast back to float32.

    Every float32 initializer becomes a float16 one followed by a Cast node. onnxruntime's
    constant folding replaces each Cast(initializer) by a float32 tensor when the session is
    created, so inference runs exactly the fp32 graph, at fp32 speed, with weights rounded to
    fp16 (11-bit mantissa): the file is half the size. Unlike onnxruntime's float16 converter,
    no operator computes in fp16, which on CPU would add casts and lose speed. Returns the number
    of tensors converted.
    """
    model = onnx.load(str(src))
    graph = model.graph
    casts = []
    kept = []
    converted = 0
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            kept.append(init)
            continue
        arr = onnx.numpy_helper.to_array(init)
        half = onnx.numpy_helper.from_array(arr.astype(np.float16), name=f"{init.name}__fp16")
        kept.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # casts first keeps the graph topologically sorted
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return converted


def parity(model: nn.Module, runner: OnnxRunner, crops: torch.Tensor, norm: Normalisation) -> float:
    """Max abs difference of softmax probabilities between PyTorch and onnxruntime on the same
    normalised input: the graph is checked, not the normalisation."""
    x = normalise(to_float(crops), norm)
    with torch.no_grad():
        p_torch = torch.softmax(model(x), 1).numpy()
    p_onnx = softmax(runner.run_normalised(x.numpy()))
    return float(np.abs(p_torch - p_onnx).max())


def fp32_graph(path: Path, out: Path) -> Path:
    """The float32 graph of an exported file, also of one whose weights are stored as float16:
    onnxruntime's constant folding turns each Cast(float16 weight) into a float32 weight, which is
    what quantisation needs to see."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return out


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: NDArray[np.float32]) -> None:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on real val crops.

    Weights use 7 of their 8 bits (`reduce_range`). onnxruntime multiplies uint8 activations by
    int8 weights with instructions that add pairs of products into int16 on x86 CPUs without
    VNNI (this machine), and full-range weights overflow there. Measured on 2.1.0 over a quarter
    of the test split: float 5.196, int8 5.922 with full-range weights, 5.208 with reduce_range
    (uint8 weights: 5.212, symmetric int8 activations: 5.540, percentile or entropy calibration:
    5.898 / 5.922, keeping the head and the probabilities in float: 5.918).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": calibration[i : i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            return next(self._it, None)

    pre = int8_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    quantize_static(
        str(pre),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        reduce_range=True,
    )
    pre.unlink(missing_ok=True)


def int8_variant(
    fp32_path: Path,
    int8_path: Path,
    data: CachedData,
    norm: Normalisation,
    temperature: float,
    estimate_temperature: float = 1.0,
) -> Int8Variant:
    """Quantise `fp32_path` (calibrated on the first 512 val crops), measure the int8 file on the
    test split, and describe it for the manifest. `temperature` and `estimate_temperature` are the
    float model's, which the service applies to either file: the int8 file's coverage and MAE are
    measured with them."""
    calib = normalise(to_float(data.val.crops[:512]), norm).numpy()
    quantize_int8(fp32_path, int8_path, calib)
    q_logits = OnnxRunner(int8_path, norm).logits(data.test.crops.numpy())
    qm = served_metrics(q_logits, data.test.ages.numpy(), AGES, temperature, estimate_temperature)
    return Int8Variant(
        file=int8_path.name,
        sha256=sha256_file(int8_path),
        bytes=int8_path.stat().st_size,
        test_mae=qm.mae,
        test_cs5=qm.cs5,
        coverage90_calibrated=qm.extra["coverage90_calibrated"],
    )


def register(
    onnx_path: Path,
    store: Path,
    name: str,
    version: str,
    spec: AlignmentSpec,
    norm: Normalisation,
    metrics: Metrics,
    temperature: float,
    parameters: int,
    split_sha256: str,
    training_data: str,
    notes: dict[str, str | float | int],
    card: str,
    file_name: str = "model.onnx",
    estimate_temperature: float = 1.0,
    detector: DetectorSpec | None = None,
    int8: tuple[Path, Int8Variant] | None = None,
) -> Path:
    """Copy the ONNX file (and its int8 copy) into model_store/<name>/<version>/ and write the
    manifest and card.

    A version is never silently replaced by another model: the store is committed, and a config
    that still names a shipped version (or a GPU run, which is not bit-reproducible) would
    otherwise overwrite it. Registering the same file again (a resumed pipeline) is allowed.
    """
    dest = store / name / version
    if (dest / MANIFEST_FILENAME).is_file():
        registered = ModelManifest.load(dest / MANIFEST_FILENAME).sha256
        new = sha256_file(onnx_path)
        if registered != new:
            raise FileExistsError(
                f"{name} {version} is already registered in {store} with another model "
                f"(sha256 {registered[:12]}, this one {new[:12]}): set [export] version to a new "
                f"version, or delete {dest} to replace it"
            )
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / file_name
    if onnx_path.resolve() != target.resolve():
        shutil.copyfile(onnx_path, target)
    if int8 is not None:
        shutil.copyfile(int8[0], dest / int8[1].file)
    manifest = ModelManifest(
        name=name,
        version=version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        file=file_name,
        sha256=sha256_file(target),
        alignment=spec,
        detector=detector or DetectorSpec(),
        normalisation=norm,
        ages=list(range(101)),
        temperature=temperature,
        estimate_temperature=estimate_temperature,
        parameters=parameters,
        training_data=training_data,
        split_sha256=split_sha256,
        metrics=metrics,
        int8=int8[1] if int8 is not None else None,
        notes=notes,
    )
    manifest.save(dest / MANIFEST_FILENAME)
    (dest / "MODEL_CARD.md").write_text(card)
    log.info("registered %s/%s (%s, sha256 %s)", name, version, file_name, manifest.sha256[:12])
    return dest


def export_classifier(
    cfg: PipelineConfig,
    model: nn.Module,
    data: CachedData,
    version: str,
    description: str,
    extra_card: str = "",
    quantize: bool | None = None,
    test_time_views: bool = True,
) -> Path:
    """Export to ONNX, check parity, calibrate on val, measure the shipped file on test through
    the service's OnnxRunner, and register it."""
    ex = cfg.export
    work = cfg.run_dir / "export" / version
    work.mkdir(parents=True, exist_ok=True)
    fp32_path, onnx_path = work / "model.fp32.onnx", work / "model.onnx"
    params = count_parameters(model)
    model = model.to(memory_format=torch.contiguous_format).eval()
    # test_time_views=False (agelens export --no-tta): one pass, whatever the config's views.
    views = (
        ViewAveraged(model, ex.flip_tta, tuple(ex.tta_shifts))
        if test_time_views
        else ViewAveraged(model, False)
    )
    if views.passes > 1:
        model = views.eval()
    export_onnx(model, fp32_path, data.spec.crop_size, ex.opset)
    diff = parity(model, OnnxRunner(fp32_path, NORM), data.test.crops[:256], NORM)
    if diff > 1e-4:
        raise RuntimeError(f"ONNX parity failed: max abs prob diff {diff:.2e} > 1e-4")
    if ex.fp16_weights:
        store_weights_fp16(fp32_path, onnx_path)
    else:
        shutil.copyfile(fp32_path, onnx_path)
    # Everything below is measured on the file that ships, fed as the service feeds it.
    runner = OnnxRunner(onnx_path, NORM)
    diff_shipped = parity(model, runner, data.test.crops[:256], NORM)
    val_true, test_true = data.val.ages.numpy(), data.test.ages.numpy()
    val_logits = runner.logits(data.val.crops.numpy())
    temperature, estimate_t, val_maes = served_temperatures(val_logits, val_true, AGES, data.groups("val"))
    test_logits = runner.logits(data.test.crops.numpy())
    # Every test figure is the service's answer: the age at the estimate temperature, the
    # interval at the calibrated one.
    metrics = served_metrics(test_logits, test_true, AGES, temperature, estimate_t)
    metrics.extra["coverage90_uncalibrated"] = round(
        interval_coverage(softmax(test_logits), test_true, AGES), 4
    )
    metrics.extra["onnx_parity_max_abs_prob_diff"] = float(f"{diff_shipped:.3g}")
    metrics.extra["val_mae"] = val_maes["calibrated" if estimate_t != 1.0 else "raw"]
    metrics.extra["val_mae_raw_softmax"] = val_maes["raw"]
    metrics.extra["val_mae_calibrated_softmax"] = val_maes["calibrated"]
    metrics.extra["test_mae_raw_softmax"] = mae_at_temperature(test_logits, test_true, AGES, 1.0)
    demo = demographic_metrics(softmax(test_logits, estimate_t), data.test.records, AGES)
    by_dataset = reports_by_dataset(test_logits, data.test, data.datasets, AGES, temperature, estimate_t)
    for name, rep in by_dataset.items():
        metrics.extra[f"{name}_test_mae"] = rep.metrics.mae
        metrics.extra[f"{name}_coverage90_calibrated"] = rep.metrics.extra["coverage90_calibrated"]
    notes: dict[str, str | float | int] = {
        "description": description,
        "test_time_augmentation": views.describe(),
        "flops_macs": conv_flops(model, data.spec.crop_size),
        "onnx_bytes": onnx_path.stat().st_size,
        "weights_storage": "float16, cast to float32 when the session loads (fp32 compute)"
        if ex.fp16_weights
        else "float32",
    }
    if ex.fp16_weights:
        fp32_logits = OnnxRunner(fp32_path, NORM).logits(data.test.crops.numpy())
        notes["fp32_weights_test_mae"] = mae_at_temperature(fp32_logits, test_true, AGES, estimate_t)
        notes["fp32_weights_onnx_bytes"] = fp32_path.stat().st_size
        notes["fp32_onnx_parity_max_abs_prob_diff"] = float(f"{diff:.3g}")
    int8 = None
    if quantize if quantize is not None else ex.quantize:
        int8_path = work / "model.int8.onnx"
        int8 = (int8_path, int8_variant(fp32_path, int8_path, data, NORM, temperature, estimate_t))
    registry = load_registry()
    entries = [registry[name] for name in data.datasets if name in registry]
    split_files = [e.split for e in entries] if cfg.data.datasets else [cfg.data.split]
    # One split: its sha256; several: the sha256 of their sha256s, in the datasets' order.
    shas = [sha256_file(f) for f in split_files if f.exists()]
    if not shas:
        split_sha = ""
    elif len(shas) == 1:
        split_sha = shas[0]
    else:
        split_sha = hashlib.sha256("".join(shas).encode()).hexdigest()
    card = render_card(
        ex.name,
        version,
        description,
        metrics,
        demo,
        params,
        notes,
        temperature,
        data.spec,
        extra_card,
        estimate_t,
        int8[1] if int8 else None,
        entries,
        by_dataset,
    )
    dest = register(
        onnx_path,
        ex.model_store,
        ex.name,
        version,
        data.spec,
        NORM,
        metrics,
        temperature,
        params,
        split_sha,
        cfg.data.description,
        notes,
        card,
        estimate_temperature=estimate_t,
        detector=data.detector,
        int8=int8,
    )
    (dest / "metrics_full.json").write_text(
        json.dumps(
            {
                "test": metrics.model_dump(),
                "demographics": {k: [b.model_dump() for b in v] for k, v in demo.items()},
                "by_dataset": {k: v.model_dump() for k, v in by_dataset.items()},
            },
            indent=2,
        )
        + "\n"
    )
    log.info(
        "export: %s/%s test MAE %.3f CS@5 %.3f, coverage %.3f (T=%.2f, age at T=%.2f)",
        ex.name,
        version,
        metrics.mae,
        metrics.cs5,
        metrics.extra["coverage90_calibrated"],
        temperature,
        estimate_t,
    )
    return dest
