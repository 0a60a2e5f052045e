"""Does a point on the line between the shipped 3.4.0 and its mixture fine-tune keep UTKFace's
accuracy and most of All-Age-Faces' gain? (WiSE-FT: Wortsman et al., "Robust fine-tuning of
zero-shot models", CVPR 2022.)

Every mixture student started from 3.4.0's weights, so the networks between them lie in one
basin. For each mixing weight `a`, the network is (1 - a) * 3.4.0 + a * end, where `end` is one
mixture student or the uniform soup of several; BatchNorm statistics are recomputed on the
unaugmented mixture train crops (the mixed weights need their own). Every network is scored as
the export serves it (flip-averaged, temperatures fitted on the mixture's val). The weight is
chosen on val alone: the lowest mean of the two datasets' val MAE; test is reported for every
point, to show the curve, not to choose.

    python -m research.mixture.interpolate --start model_store/agelens-student/3.4.0/model.onnx \\
        --end runs/mixture-4.0.0/student_seed0 --weights 0,0.25,0.5,0.6,0.7,0.8,0.9,1 \\
        --out research/mixture/results/interpolate.json --save runs/mixture-wise
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

from research.mixture.ablation import score_model
from training.augment import normalised_batches
from training.classifier import AgeClassifier, load_classifier
from training.config import ClassifierConfig
from training.dataset import NORM, CachedData, load_mixture
from training.datasets import load_registry
from training.interpolate import average_weights, lerp_weights
from training.onnx_import import student_from_onnx, write_checkpoint

log = logging.getLogger("research.interpolate")


def with_weights(
    template: AgeClassifier, state: dict[str, torch.Tensor], data: CachedData, recompute_bn: bool
) -> AgeClassifier:
    template.load_state_dict(state)
    if recompute_bn:
        update_bn(normalised_batches(data.train.crops, NORM, torch.device("cpu"), 512), template)
    return template.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", type=Path, required=True, help="the shipped network's model.onnx")
    ap.add_argument(
        "--end",
        type=Path,
        nargs="+",
        required=True,
        help="mixture student run folders (their best.pt), averaged",
    )
    ap.add_argument("--weights", default="0,0.25,0.5,0.6,0.7,0.8,0.9,1")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--save", type=Path, help="run folder for the val-chosen network's best.pt")
    ap.add_argument(
        "--bn",
        choices=("recompute", "mix"),
        default="recompute",
        help="BatchNorm statistics: recomputed on the unaugmented train crops, or mixed like the weights",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    registry = load_registry()
    data = load_mixture({name: registry[name].cache for name in ("utkface", "aaf")})
    ends = [load_classifier(p / "best.pt") for p in args.end]
    cfg = ClassifierConfig.model_validate(torch.load(args.end[0] / "best.pt", weights_only=False)["config"])
    start = student_from_onnx(args.start, cfg, data.train.crops, NORM).state_dict()
    end = average_weights([m.state_dict() for m in ends])
    template = load_classifier(args.end[0] / "best.pt")
    points = []
    for weight in (float(w) for w in args.weights.split(",")):
        score = score_model(
            with_weights(template, lerp_weights(start, end, weight), data, args.bn == "recompute"), data
        )
        score.pop("per_face")
        score["weight"] = weight
        score["val_mean_mae"] = round((score["utkface_val_mae"] + score["aaf_val_mae"]) / 2, 4)
        log.info("a=%.2f %s", weight, {k: v for k, v in score.items() if k.endswith("_mae")})
        points.append(score)
    chosen = min(points, key=lambda p: p["val_mean_mae"])
    report = {
        "bn": args.bn,
        "start": str(args.start),
        "end": [str(p) for p in args.end],
        "chosen_on_val": chosen["weight"],
        "points": points,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.save:
        model = with_weights(
            template, lerp_weights(start, end, chosen["weight"]), data, args.bn == "recompute"
        )
        write_checkpoint(model, cfg, args.start, args.save)
    print(json.dumps({"chosen_on_val": chosen["weight"]}))
    for p in points:
        print(
            p["weight"], p["val_mean_mae"], {k: v for k, v in p.items() if k.endswith(("_mae", "coverage90"))}
        )


if __name__ == "__main__":
    main()
