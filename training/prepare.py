"""Build the aligned-crop cache once, so that no training epoch ever runs face detection again.

The cache is a folder outside git: `crops.npy` (N, S, S, 3) uint8, memory-mapped at training
time, `index.csv` (one row per crop, with its record and split), and the alignment and detector
settings that made it. Every image goes through `agelens.imaging.read_image_file` and
`agelens.faces.find_faces`, the calls the service makes, keeping the largest face.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from agelens.faces import AlignedFace, FaceDetector, find_faces
from agelens.imaging import read_image_file
from agelens.manifest import AlignmentSpec, DetectorSpec
from training.data import Record, record_from_row

log = logging.getLogger(__name__)

_WORKER: tuple[AlignmentSpec, FaceDetector] | None = None


def _init_worker(spec_json: str, detector_json: str) -> None:
    global _WORKER
    os.environ.setdefault("GLOG_minloglevel", "2")
    spec = AlignmentSpec.model_validate_json(spec_json)
    _WORKER = (spec, FaceDetector(DetectorSpec.model_validate_json(detector_json)))


def largest_face(
    path: str | Path, spec: AlignmentSpec, detector: FaceDetector
) -> tuple[AlignedFace | None, int]:
    """A dataset image's labelled face (the largest, through the service's face path) and how many
    faces were found. A file that cannot be read counts as one where no face was found."""
    try:
        rgb = read_image_file(path)
    except Exception:
        return None, 0
    found = find_faces(rgb, spec, detector, max_faces=1)
    return (found.faces[0] if found.faces else None), found.detected


def _process(paths: list[str]) -> list[tuple[np.ndarray | None, int, float]]:
    assert _WORKER is not None
    spec, detector = _WORKER
    out: list[tuple[np.ndarray | None, int, float]] = []
    for p in paths:
        face, detected = largest_face(p, spec, detector)
        out.append((None, 0, 0.0) if face is None else (face.crop, detected, face.face.score))
    return out


def build_cache(
    records: list[Record],
    image_root: Path,
    out_dir: Path,
    spec: AlignmentSpec,
    detector: DetectorSpec | None = None,
    workers: int = 2,
    chunk: int = 64,
) -> dict[str, float]:
    """Detect and align every record's image; write crops.npy, index.csv and stats.json."""
    detector = detector or DetectorSpec()
    out_dir.mkdir(parents=True, exist_ok=True)
    s = spec.crop_size
    n = len(records)
    crops = np.lib.format.open_memmap(
        out_dir / "crops.tmp.npy", mode="w+", dtype=np.uint8, shape=(n, s, s, 3)
    )
    paths = [
        str(Path(r.filename) if Path(r.filename).is_absolute() else image_root / r.filename) for r in records
    ]
    chunks = [paths[i : i + chunk] for i in range(0, n, chunk)]
    detected = np.zeros(n, dtype=bool)
    n_faces = np.zeros(n, dtype=np.int32)
    t0 = time.time()
    done = 0
    # "spawn", not fork: the parent may already run torch's OpenMP threads, and a forked child
    # inherits their locks and deadlocks (seen here: the smoke pipeline hung in prepare).
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(spec.model_dump_json(), detector.model_dump_json()),
    ) as pool:
        for ci, results in enumerate(pool.map(_process, chunks)):
            for j, (crop, nf, _score) in enumerate(results):
                i = ci * chunk + j
                n_faces[i] = nf
                if crop is not None:
                    crops[i] = crop
                    detected[i] = True
            done += len(results)
            if ci % 20 == 0 or done == n:
                rate = done / max(time.time() - t0, 1e-6)
                log.info(
                    "prepare: %d/%d images (%.0f img/s, %d detected)",
                    done,
                    n,
                    rate,
                    int(detected[:done].sum()),
                )
    crops.flush()
    del crops
    # Keep only detected faces in the final cache: training never sees a non-face.
    full = np.load(out_dir / "crops.tmp.npy", mmap_mode="r")
    keep = np.flatnonzero(detected)
    final = np.lib.format.open_memmap(
        out_dir / "crops.npy", mode="w+", dtype=np.uint8, shape=(len(keep), s, s, 3)
    )
    for a in range(0, len(keep), 4096):
        final[a : a + 4096] = full[keep[a : a + 4096]]
    final.flush()
    del final, full
    (out_dir / "crops.tmp.npy").unlink()
    with open(out_dir / "index.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["row", "filename", "age", "gender", "race", "split", "faces_found"])
        for row, i in enumerate(keep):
            r = records[i]
            w.writerow(
                [
                    row,
                    r.filename,
                    r.age,
                    "" if r.gender is None else r.gender,
                    "" if r.race is None else r.race,
                    r.split,
                    int(n_faces[i]),
                ]
            )
    stats = {
        "images": n,
        "detected": int(detected.sum()),
        "detection_rate": float(detected.mean()) if n else 0.0,
        "multiple_faces": int((n_faces > 1).sum()),
        "seconds": round(time.time() - t0, 1),
    }
    by_split = {}
    for part in ("train", "val", "test"):
        idx = [i for i, r in enumerate(records) if r.split == part]
        if idx:
            by_split[part] = float(detected[idx].mean())
    stats["detection_rate_by_split"] = by_split  # type: ignore[assignment]
    stats["missed"] = [records[i].filename for i in np.flatnonzero(~detected)][:50]  # type: ignore[assignment]
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out_dir / "alignment.json").write_text(spec.model_dump_json(indent=2) + "\n")
    (out_dir / "detector.json").write_text(detector.model_dump_json(indent=2) + "\n")
    return stats


def cache_settings(cache_dir: Path) -> tuple[AlignmentSpec, DetectorSpec]:
    """The alignment and detector settings a cache was built with."""
    spec = AlignmentSpec.model_validate_json((cache_dir / "alignment.json").read_text())
    detector_file = cache_dir / "detector.json"
    # A cache without detector.json was built before it was recorded, always with the defaults.
    detector = (
        DetectorSpec.model_validate_json(detector_file.read_text())
        if detector_file.is_file()
        else DetectorSpec()
    )
    return spec, detector


def load_cache(cache_dir: Path) -> tuple[np.ndarray, list[Record], AlignmentSpec, DetectorSpec]:
    crops = np.load(cache_dir / "crops.npy", mmap_mode="r")
    with open(cache_dir / "index.csv", newline="") as fh:
        recs = [record_from_row(row) for row in csv.DictReader(fh)]
    return (crops, recs, *cache_settings(cache_dir))


def records_summary(records: list[Record]) -> dict[str, int]:
    return {part: sum(r.split == part for r in records) for part in ("train", "val", "test")}
