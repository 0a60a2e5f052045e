"""A greedy weight soup of networks fine-tuned from one starting point (Wortsman et al., "Model
soups", ICML 2022).

Every later generation of the student (3.1.0's network, then the gen3 SWA runs and the gen4
runs taught by wide teachers, and their labels-only controls) started from the same weights, so
they lie in one basin of the loss, and the average of their weights is itself a network of the
same size, with the same latency, that can be better than each of them. Averaging networks
trained from different random starts does not work (they are not in one basin), so only
warm-started runs and the network they started from are ingredients.

Greedy, as in the paper: rank the ingredients by their own val MAE, start from the best, and keep
each next one only if the soup's val MAE falls. Each soup's BatchNorm statistics are recomputed
on the unaugmented training crops (the averaged weights need their own). The score is the served
age: flip-averaged, at the temperature fitted on val for the 90 % interval, as the export stage
gives it. Val alone chooses; test is reported once, for the final soup and each ingredient.

    python -m research.weight_soup.soup --out runs/utkface-soup/student_soup \\
        --report training/results/soup.json <ingredient run folders or last.pt files...>

An ingredient is a run folder (its best.pt: the epoch with the best one-pass val MAE) or a run's
last.pt (the weights at the end of its schedule). The two differ when a fine-tune's noisy
one-pass val happened to peak early: both are then worth offering, and the greedy rule, on the
served age, decides.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

from research.scoring import ServedAge
from training.augment import normalised_batches
from training.classifier import AgeClassifier, load_classifier
from training.dataset import NORM, CachedData, load_data
from training.evaluate import paired_mae_change
from training.interpolate import average_weights
from training.pipeline import same_faces

log = logging.getLogger("training.soup")


def ingredient_checkpoint(arg: Path) -> Path:
    """A run folder means its best.pt; a .pt file (a run's last.pt) is taken as it is."""
    return arg if arg.suffix == ".pt" else arg / "best.pt"


def config_checkpoint(path: Path) -> Path:
    """The checkpoint holding `path`'s network config: best.pt carries its own; a resume
    checkpoint (last.pt) does not, so it is the best.pt beside it (same run, same network)."""
    has_config = "config" in torch.load(path, map_location="cpu", weights_only=False)
    return path if has_config else path.parent / "best.pt"


def load_ingredient(path: Path) -> AgeClassifier:
    """The network of `config_checkpoint(path)` with the weights of `path`."""
    model = load_classifier(config_checkpoint(path))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])
    return model.eval()


def soup_model(paths: list[Path], data: CachedData) -> AgeClassifier:
    model = load_ingredient(paths[0])
    states = [torch.load(p, map_location="cpu", weights_only=False)["model"] for p in paths]
    model.load_state_dict(average_weights(states))
    if len(paths) > 1:
        update_bn(normalised_batches(data.train.crops, NORM, torch.device("cpu"), 512), model)
    return model.eval()


def greedy_soup(paths: list[Path], data: CachedData) -> tuple[list[Path], list[dict]]:
    """The chosen ingredients, and the val MAE of every step (kept or not)."""
    alone = {p: ServedAge(load_ingredient(p), data).mae["val"] for p in paths}
    ranked = sorted(paths, key=alone.__getitem__)
    chosen = [ranked[0]]
    best = alone[ranked[0]]
    steps = [{"tried": str(ranked[0]), "alone_val": alone[ranked[0]], "soup_val": best, "kept": True}]
    log.info("soup starts from %s: val %.4f", ranked[0], best)
    for path in ranked[1:]:
        val = ServedAge(soup_model([*chosen, path], data), data).mae["val"]
        kept = val < best
        verdict = "kept" if kept else "dropped"
        log.info("+ %s (alone %.4f): soup val %.4f -> %s", path, alone[path], val, verdict)
        steps.append({"tried": str(path), "alone_val": alone[path], "soup_val": val, "kept": kept})
        if kept:
            chosen.append(path)
            best = val
    return chosen, steps


def save_soup(model: AgeClassifier, template: Path, members: list[Path], out_dir: Path) -> Path:
    """A best.pt in the members' format (config and all), so the export stage and `reevaluate`
    read it like any run's."""
    state = torch.load(config_checkpoint(template), map_location="cpu", weights_only=False)
    state = {**state, "model": model.state_dict(), "soup": [str(m) for m in members]}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_dir / "best.pt")
    return out_dir / "best.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "ingredients", nargs="+", type=Path, help="run folders (their best.pt) or a run's last.pt"
    )
    ap.add_argument("--cache", type=Path, default=Path("data/cache/utkface-64"))
    ap.add_argument("--out", type=Path, required=True, help="folder for the soup's best.pt")
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--reference",
        type=Path,
        help="run folder of the network to compare with, face by face (a shipped ONNX: training.onnx_import)",
    )
    ap.add_argument(
        "--reference-cache",
        type=Path,
        help="the reference's crops of the same faces, when it learnt another alignment (default: --cache)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    data = load_data(args.cache)
    paths = [ingredient_checkpoint(p) for p in args.ingredients]
    chosen, steps = greedy_soup(paths, data)
    soup_net = soup_model(chosen, data)
    soup = ServedAge(soup_net, data, ("val", "test"))
    uniform = ServedAge(soup_model(paths, data), data, ("val", "test"))
    first = ServedAge(load_ingredient(chosen[0]), data, ("val", "test"))
    save_soup(soup_net, chosen[0], chosen, args.out)
    report = {
        "cache": str(args.cache),
        "score": "flip-averaged, calibrated-temperature mean age (as served); val chooses",
        "greedy_steps": steps,
        "chosen": [str(p) for p in chosen],
        "soup": soup.report(data),
        "uniform_soup_of_all": uniform.report(data),
        "best_ingredient": {"path": str(chosen[0]), **first.report(data)},
        "soup_vs_best_ingredient": {
            p: paired_mae_change(soup.estimates[p], first.estimates[p], data.part(p).ages.numpy())
            for p in ("val", "test")
        },
        "saved": str(args.out / "best.pt"),
    }
    if args.reference:
        ref_data = data if args.reference_cache is None else same_faces(data, load_data(args.reference_cache))
        ref = ServedAge(load_classifier(args.reference / "best.pt"), ref_data, ("val", "test"))
        report["reference"] = {
            "path": str(args.reference / "best.pt"),
            "cache": str(args.reference_cache or args.cache),
            **ref.report(ref_data),
        }
        report["soup_vs_reference"] = {
            p: paired_mae_change(soup.estimates[p], ref.estimates[p], data.part(p).ages.numpy())
            for p in ("val", "test")
        }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    log.info(
        "soup of %d: val %.4f test %.4f (best ingredient val %.4f test %.4f; uniform val %.4f test %.4f)",
        len(chosen),
        soup.mae["val"],
        soup.mae["test"],
        first.mae["val"],
        first.mae["test"],
        uniform.mae["val"],
        uniform.mae["test"],
    )


if __name__ == "__main__":
    main()
