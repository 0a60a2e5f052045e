"""Which views of each crop should the exported graph average (export.ViewAveraged)?

A network (a registered model rebuilt from its ONNX file by onnx_import, or a run's checkpoint)
is scored as the service scores it (soup.ServedAge: the mean age of the averaged distribution at
the temperature fitted on val), on val and test, overall and per age band, for each candidate
set of views:

- the crop and its mirror (what every version up to 3.4.0 exports, 2 passes);
- the same plus the crop moved by one shift of `SHIFTS` (whole pixels, nothing resampled) and
  its mirror (4 passes), or by a shift and its opposite (`PAIRS`, 6 passes);
- the same plus the crop zoomed to an alignment margin of `ZOOMS` and its mirror (4 passes;
  augment.ZoomedView, bilinear resampling). Scored for the record, never exported: resampling
  smooths fine texture, and every zoom, in or out, pulls the oldest faces about a year further
  down (research/notebook.md).

The set exported is the best on val among those within `--passes` (default 4: twice the
compute of 3.4.0). Test is reported beside it, as everywhere in this project, and chose nothing.

    python -m research.test_time_views.test_time_views --model-dir model_store/agelens-student/3.4.0 \\
        --cache data/cache/utkface-64 --out research/test_time_views/results/test_time_views_3.4.0.json

With `--shifts`, only the crop and its mirror and that one set are scored (a set chosen on one
network, checked on others); `--checkpoint` scores a run's network (a run folder's best.pt or a
.pt file) instead of a registered model.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from agelens.ages import softmax
from agelens.manifest import MANIFEST_FILENAME, ModelManifest, Normalisation
from research.scoring import ServedAge
from research.weight_soup.soup import ingredient_checkpoint, load_ingredient
from training.augment import ZoomedView
from training.config import ClassifierConfig
from training.dataset import AGES, NORM, CachedData, load_data
from training.evaluate import compute_metrics, paired_mae_change, predict_logits
from training.export import ViewAveraged
from training.onnx_import import student_from_onnx

log = logging.getLogger(__name__)

PARTS = ("val", "test")
SHIFTS = (
    (1, 0),
    (-1, 0),
    (0, 1),
    (0, -1),
    (1, 1),
    (-1, -1),
    (1, -1),
    (-1, 1),
    (2, 0),
    (-2, 0),
    (0, 2),
    (0, -2),
)
PAIRS = (((1, 0), (-1, 0)), ((0, 1), (0, -1)), ((2, 0), (-2, 0)), ((0, 2), (0, -2)), ((1, 1), (-1, -1)))
ZOOMS = (-0.03, 0.03)


@dataclass(frozen=True)
class Views:
    """One candidate: the crop and its mirror, plus these shifts (or this zoom), each mirrored."""

    shifts: tuple[tuple[int, int], ...] = ()
    zoom: float | None = None

    @property
    def passes(self) -> int:
        return 2 * (1 + len(self.shifts) + (self.zoom is not None))


def candidates() -> list[Views]:
    return [
        Views(),
        *[Views((s,)) for s in SHIFTS],
        *[Views(pair) for pair in PAIRS],
        *[Views(zoom=z) for z in ZOOMS],
    ]


def view_logits(
    model: torch.nn.Module, data: CachedData, views: Views, norm: Normalisation
) -> dict[str, NDArray[np.float32]]:
    """Log of the mean probability over the views, on val and test: exactly the exported graph's
    output for shifts; for a zoom, the crop-and-mirror graph averaged with the zoomed one's."""
    net = ViewAveraged(model, True, views.shifts).eval()
    logits = {p: predict_logits(net, data.part(p).crops, norm) for p in PARTS}
    if views.zoom is None:
        return logits
    margin = data.spec.margin
    zoomed = ViewAveraged(ZoomedView(model, margin, margin + views.zoom)).eval()
    return {
        p: np.log((softmax(lg) + softmax(predict_logits(zoomed, data.part(p).crops, norm))) / 2 + 1e-12)
        for p, lg in logits.items()
    }


def bands(age: ServedAge, data: CachedData, part: str) -> dict[str, dict[str, float]]:
    """MAE and mean signed error per age band: a view that helps the crowded middle ages can
    pull the oldest further down, which the overall MAE hides."""
    m = compute_metrics(softmax(age.logits[part], age.temperature), data.part(part).ages.numpy(), AGES, part)
    return {b.name: {"mae": round(b.mae, 3), "bias": round(b.bias, 3)} for b in m.bands}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="a registered version (model_store/<name>/<version>)")
    source.add_argument("--checkpoint", type=Path, help="a run folder (its best.pt) or a .pt file")
    ap.add_argument("--cache", type=Path, default=Path("data/cache/utkface-64"))
    ap.add_argument(
        "--shifts",
        type=int,
        nargs="+",
        help="score only this set: dx dy [dx dy ...] (and the crop and mirror)",
    )
    ap.add_argument("--passes", type=int, default=4, help="the most passes an exported set may take")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.shifts and len(args.shifts) % 2:
        ap.error("--shifts takes pairs: dx dy")
    if args.shifts:
        args.shifts = list(zip(args.shifts[::2], args.shifts[1::2], strict=True))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    data = load_data(args.cache)
    if args.model_dir is not None:
        manifest = ModelManifest.load(args.model_dir / MANIFEST_FILENAME)
        if data.spec != manifest.alignment:
            raise SystemExit(f"{args.cache} was aligned otherwise than {args.model_dir} expects")
        norm = manifest.normalisation
        # The architecture is the default student's (every registered version since 2.1.0);
        # student_from_onnx refuses a file that does not hold it.
        model = student_from_onnx(args.model_dir / manifest.file, ClassifierConfig(), data.train.crops, norm)
    else:
        norm = NORM  # what the pipeline trains with
        model = load_ingredient(ingredient_checkpoint(args.checkpoint))
    sets = [Views(), Views(tuple(args.shifts))] if args.shifts else candidates()
    rows = []
    baseline: ServedAge | None = None
    for views in sets:
        age = ServedAge.from_logits(view_logits(model, data, views, norm), data)
        baseline = baseline or age
        row = {
            "shifts": [list(s) for s in views.shifts],
            "zoom_margin": views.zoom,
            "passes": views.passes,
            "temperature": round(age.temperature, 4),
            **{f"{p}_mae": round(age.mae[p], 4) for p in PARTS},
            **{
                f"{p}_change_vs_crop_and_mirror": paired_mae_change(
                    age.estimates[p], baseline.estimates[p], data.part(p).ages.numpy()
                )
                for p in PARTS
            },
            **{f"{p}_bands": bands(age, data, p) for p in PARTS},
        }
        log.info("%s", {k: v for k, v in row.items() if not k.endswith("_bands")})
        rows.append(row)
    exportable = [r for r in rows if r["zoom_margin"] is None and r["passes"] <= args.passes]
    chosen = min(exportable, key=lambda r: r["val_mae"])
    report = {
        "model": str(args.model_dir or args.checkpoint),
        "score": "mean age of the views' mean probability at the temperature fitted on val (as served)",
        "rule": f"the shift set best on val within {args.passes} passes",
        "candidates": rows,
        "chosen_on_val": chosen,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(chosen, indent=2))


if __name__ == "__main__":
    main()
