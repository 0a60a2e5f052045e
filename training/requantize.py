"""A new model-store version with a re-made int8 variant and the same float weights.

Used when the quantiser changes but the network does not (2.1.0 -> 2.2.0: 7-bit weights, see
export.quantize_int8). The float file is copied byte for byte, so the new version answers
exactly as the old one; the int8 file is quantised again from it, calibrated on the first 512
val crops as the pipeline does, and evaluated on the cached test split. The old version stays
in the store.

    agelens requantize --from model_store/agelens-student/2.1.0 --version 2.2.0 \\
        --cache data/cache/utkface-64
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from agelens.manifest import MANIFEST_FILENAME, AgeBand, ModelManifest
from training.dataset import load_data
from training.evaluate import mae_at_temperature
from training.export import fp32_graph, int8_variant, onnx_logits, onnx_session
from training.model_card import render_card

log = logging.getLogger(__name__)


def requantize(source: Path, version: str, cache: Path) -> Path:
    manifest = ModelManifest.load(source / MANIFEST_FILENAME)
    data = load_data(cache)
    if data.spec != manifest.alignment:
        raise ValueError("the cache was built with other alignment parameters than the model's manifest")
    ages = np.asarray(manifest.ages, dtype=np.float64)
    norm = manifest.normalisation

    # The float model on this cache must give the metrics its manifest records: else the cache
    # (or the face pipeline that built it) differs from the one the model was measured with.
    fp32_logits = onnx_logits(onnx_session(source / manifest.file), data.test.crops, norm)
    t_est = manifest.estimate_temperature
    fp32_mae = mae_at_temperature(fp32_logits, data.test.ages.numpy(), ages, t_est)
    if abs(fp32_mae - manifest.metrics.mae) > 0.01:
        raise ValueError(
            f"{source}: test MAE {fp32_mae:.4f} on this cache, its manifest says {manifest.metrics.mae:.4f}"
        )

    dest = source.parent / version
    dest.mkdir(parents=True, exist_ok=False)
    shutil.copyfile(source / manifest.file, dest / manifest.file)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = fp32_graph(source / manifest.file, Path(tmp) / "fp32.onnx")
        int8_notes = int8_variant(
            fp32, dest / "model.int8.onnx", data, norm, ages, manifest.temperature, t_est
        )
    q_mae = int8_notes["int8_test_mae"]
    old_int8_mae = manifest.notes.get("int8_test_mae")
    notes = {
        **manifest.notes,
        **int8_notes,
        "derived_from": f"{manifest.name} {manifest.version}: same float file; int8 re-quantised with "
        f"7-bit weights (reduce_range) (int8 test MAE {old_int8_mae} -> {q_mae})",
    }
    new = manifest.model_copy(
        update={
            "version": version,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "notes": notes,
        }
    )
    new.save(dest / MANIFEST_FILENAME)
    full = json.loads((source / "metrics_full.json").read_text())
    (dest / "metrics_full.json").write_text(json.dumps(full, indent=2) + "\n")
    demo = {k: [AgeBand.model_validate(b) for b in v] for k, v in full["demographics"].items()}
    extra = (
        f"\n## Version history\n- {version}: the float file of {manifest.version}, byte for byte; its int8 "
        "variant re-quantised with 7-bit weights (reduce_range), which onnxruntime's uint8 x int8 kernels "
        f"cannot overflow on CPUs without VNNI (int8 test MAE {old_int8_mae} in {manifest.version} -> "
        f"{q_mae}).\n"
    )
    card = render_card(
        new.name,
        version,
        str(notes["description"]),
        new.metrics,
        demo,
        new.parameters or 0,
        notes,
        new.temperature,
        new.alignment,
        extra,
        t_est,
    )
    (dest / "MODEL_CARD.md").write_text(card)
    log.info("registered %s/%s: int8 test MAE %.4f (float %.4f)", new.name, version, q_mae, fp32_mae)
    return dest
