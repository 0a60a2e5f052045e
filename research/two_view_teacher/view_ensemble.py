"""How good a teacher is an ensemble whose members look at each face differently?

Scores each member alone and the ensemble (the mean of the members' probabilities), as the
service scores a network: flip-averaged, the mean age of the distribution at the temperature
fitted on val. A member is `run folder or best.pt @ cache`, optionally `@ zoom_from:zoom_to`
to feed it the cache's crops zoomed from one alignment margin to another
(`augment.zoom_to_margin`), which is what an online teacher that learnt another crop sees:

    python -m research.two_view_teacher.view_ensemble \\
        --out research/two_view_teacher/results/view_ensemble.json \\
        runs/shipped-3.3.0@data/cache/utkface-64 \\
        runs/tight-crop-ft-90-s3/soup@data/cache/utkface-64-m-10 \\
        "runs/tight-crop-ft-90-s3/soup@data/cache/utkface-64@0:-0.1"

Every ensemble of two or more of the members is scored. Every cache must hold the same faces in
the same order (checked).
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from agelens.ages import softmax
from research.scoring import ServedAge, flip_logits
from research.weight_soup.soup import ingredient_checkpoint, load_ingredient
from training.augment import ZoomedView
from training.dataset import CachedData, load_data
from training.pipeline import same_faces

PARTS = ("val", "test")


@dataclass
class Member:
    name: str
    checkpoint: Path
    cache: Path
    zoom: tuple[float, float] | None

    @classmethod
    def parse(cls, spec: str) -> Member:
        path, cache, *zoom = spec.split("@")
        pair = None
        if zoom:
            a, b = zoom[0].split(":")
            pair = (float(a), float(b))
        return cls(spec, ingredient_checkpoint(Path(path)), Path(cache), pair)


def served(probs: dict[str, NDArray], data: CachedData) -> dict[str, float]:
    """Val and test MAE of the served age (soup.ServedAge), the temperature fitted on val."""
    age = ServedAge.from_logits({p: np.log(np.clip(v, 1e-12, None)) for p, v in probs.items()}, data)
    return {"temperature": round(age.temperature, 4), **{f"{p}_mae": round(age.mae[p], 4) for p in PARTS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("members", nargs="+", help="run folder or .pt @ cache [@ zoom_from:zoom_to]")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    members = [Member.parse(s) for s in args.members]
    caches: dict[Path, CachedData] = {}
    for m in members:
        if m.cache not in caches:
            caches[m.cache] = load_data(m.cache)
    first = caches[members[0].cache]
    for data in caches.values():
        same_faces(first, data)
    probs = {}
    for m in members:
        model = load_ingredient(m.checkpoint)
        net = model if m.zoom is None else ZoomedView(model, *m.zoom)
        probs[m.name] = {p: softmax(lg) for p, lg in flip_logits(net, caches[m.cache], PARTS).items()}
    report: dict = {
        "score": "flip-averaged, calibrated-temperature mean age (as served)",
        "alone": {},
        "ensembles": [],
    }
    for m in members:
        report["alone"][m.name] = served(probs[m.name], first)
        print(m.name, report["alone"][m.name])
    for r in range(2, len(members) + 1):
        for combo in itertools.combinations([m.name for m in members], r):
            mean = {p: np.mean([probs[n][p] for n in combo], axis=0) for p in PARTS}
            entry = {"members": list(combo), **served(mean, first)}
            report["ensembles"].append(entry)
            print(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
