"""Accuracy of the served model as a user sees it: every test-split image POSTed over HTTP.

A real `agelens serve` process on loopback (or `--url` for one already running) gets each image
of a split file's test part as it is on disk, and the first face of each answer is scored against
the label: MAE, CS@5, signed error, 90 % interval coverage, overall and per age band. Per-face
answers are kept, so two runs (two versions, or the code before and after a change) can be
compared face by face with `--compare`.

    .venv/bin/python benchmarks/http_accuracy.py > benchmarks/results/http_accuracy.json
    .venv/bin/python benchmarks/http_accuracy.py --compare benchmarks/results/http_accuracy_before.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATASET, REPO, server

from agelens.ages import AGE_BANDS


def test_rows(split_file: Path) -> list[tuple[str, int]]:
    with open(split_file, newline="") as fh:
        return [(r["filename"], int(r["age"])) for r in csv.DictReader(fh) if r["split"] == "test"]


@contextmanager
def target(url: str | None, env: dict[str, str]) -> Iterator[str]:
    if url:
        with nullcontext(url) as u:
            yield u
        return
    with server(workers=2, env=env) as running:
        yield running.url


def estimate(client: httpx.Client, url: str, path: Path) -> dict:
    r = client.post(f"{url}/estimate", params={"distribution": "false"}, files={"image": path.read_bytes()})
    r.raise_for_status()
    return r.json()


def summarise(answers: dict[str, dict], labels: dict[str, int]) -> dict:
    found = [f for f in labels if answers.get(f) is not None]
    age = np.array([answers[f]["age"] for f in found])
    true = np.array([labels[f] for f in found], dtype=np.float64)
    low = np.array([answers[f]["low"] for f in found])
    high = np.array([answers[f]["high"] for f in found])
    err = age - true

    def stats(m: np.ndarray) -> dict:
        return {
            "n": int(m.sum()),
            "mae": round(float(np.abs(err[m]).mean()), 4),
            "cs5": round(float((np.abs(err[m]) <= 5).mean()), 4),
            "signed_error": round(float(err[m].mean()), 4),
            "coverage90": round(float(((true[m] >= low[m]) & (true[m] <= high[m])).mean()), 4),
        }

    masks = {name: (true >= lo) & (true <= hi) for name, lo, hi in AGE_BANDS}
    bands = {name: stats(m) for name, m in masks.items() if m.any()}
    return {
        "images": len(labels),
        "no_face": len(labels) - len(found),
        "overall": stats(np.ones(len(found), dtype=bool)),
        "bands": bands,
    }


def compare(new: dict[str, dict], old: dict[str, dict], labels: dict[str, int]) -> dict:
    both = [f for f in labels if new.get(f) is not None and old.get(f) is not None]
    true = np.array([labels[f] for f in both], dtype=np.float64)
    d = np.abs(np.array([new[f]["age"] for f in both]) - true) - np.abs(
        np.array([old[f]["age"] for f in both]) - true
    )
    moved = np.abs(np.array([new[f]["age"] for f in both]) - np.array([old[f]["age"] for f in both]))
    return {
        "faces": len(both),
        "mae_change": round(float(d.mean()), 4),
        "std_of_difference": round(float(d.std(ddof=1)), 4),
        "std_error": round(float(d.std(ddof=1) / np.sqrt(len(d))), 4),
        "max_age_moved": round(float(moved.max()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running service; default: start `agelens serve` with 2 workers")
    ap.add_argument("--split", default=str(REPO / "training/splits/utkface.csv"))
    ap.add_argument("--data", default=str(DATASET))
    ap.add_argument("--limit", type=int, default=0, help="first N test images only (0 = all)")
    ap.add_argument("--model-version", default="", help="AGELENS_MODEL_VERSION for the started server")
    ap.add_argument("--compare", help="an earlier output of this script: face-by-face MAE change")
    args = ap.parse_args()

    rows = test_rows(Path(args.split))
    if args.limit:
        rows = rows[: args.limit]
    labels = dict(rows)
    env = {"AGELENS_MODEL_VERSION": args.model_version} if args.model_version else {}
    answers: dict[str, dict | None] = {}
    with target(args.url, env) as url, httpx.Client(timeout=30) as client:
        model = client.get(f"{url}/ready").json()

        def one(name: str) -> tuple[str, dict | None]:
            faces = estimate(client, url, Path(args.data) / name)["faces"]
            if not faces:
                return name, None
            # UTKFace chips hold one subject; the largest face is it.
            f = max(faces, key=lambda f: f["box"]["width"] * f["box"]["height"])
            return name, {"age": f["age"], "low": f["age_interval"]["low"], "high": f["age_interval"]["high"]}

        with ThreadPoolExecutor(4) as pool:
            answers.update(pool.map(one, labels))
    out = {
        "command": "benchmarks/http_accuracy.py " + " ".join(sys.argv[1:]),
        "model": model,
        "split": str(Path(args.split).relative_to(REPO)) if args.split.startswith(str(REPO)) else args.split,
        **summarise(answers, labels),  # type: ignore[arg-type]
    }
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        out["compared_with"] = {"file": args.compare, "model": old["model"]}
        out["compared_with"].update(compare(answers, old["answers"], labels))  # type: ignore[arg-type]
    out["answers"] = answers
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
