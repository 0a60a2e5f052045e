"""One interval temperature for two populations: each dataset's 90 % interval coverage on val and
test, with the temperature fitted on the pooled val faces against one fitted so that the mean of
the datasets' val coverage is 90 % (each dataset weighing the same, as the export does since
4.1.0). The model file is fed as the export measures it (fp32 ONNX, the registry's cached crops).

    python -m research.mixture.calibration --model-dir model_store/agelens-student/4.1.0 \\
        --out research/mixture/results/calibration_4.1.0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agelens.age_model import OnnxRunner
from agelens.ages import softmax
from training.dataset import AGES, NORM, load_mixture
from training.datasets import load_registry
from training.evaluate import fit_temperature, interval_coverage, mae_at_temperature


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    registry = load_registry()
    data = load_mixture({name: registry[name].cache for name in ("utkface", "aaf")})
    runner = OnnxRunner(args.model_dir / "model.onnx", NORM)
    logits = {part: runner.logits(data.part(part).crops.numpy()) for part in ("val", "test")}
    val_true = data.val.ages.numpy()
    temperatures = {
        "pooled": fit_temperature(logits["val"], val_true, AGES),
        "datasets_alike": fit_temperature(logits["val"], val_true, AGES, groups=data.groups("val")),
    }
    report: dict = {"model_dir": str(args.model_dir)}
    for rule, t in temperatures.items():
        entry: dict = {"temperature": round(t, 4)}
        for part in ("val", "test"):
            p = data.part(part)
            for i, name in enumerate(data.datasets):
                rows = (p.source == i).numpy()
                true = p.ages.numpy()[rows]
                entry[f"{name}_{part}_coverage90"] = round(
                    interval_coverage(softmax(logits[part][rows], t), true, AGES), 4
                )
                entry[f"{name}_{part}_mae_at_t"] = mae_at_temperature(logits[part][rows], true, AGES, t)
        report[rule] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
