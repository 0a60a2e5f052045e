"""Face detection rate on a folder of face images, through the service's own code path
(agelens.imaging.decode_image on the file bytes, then the Estimator's FacePipeline detector with
the service's default settings).

    .venv/bin/python benchmarks/detection_rate.py ../shared/datasets/utkface \
        > benchmarks/results/detection_rate.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_minloglevel", "2")

_DETECTOR = None


def _init() -> None:
    global _DETECTOR
    from agelens.faces import FaceDetector
    from agelens.manifest import MANIFEST_FILENAME, ModelManifest
    from agelens.model_store import resolve_model_dir
    from service.settings import Settings

    # The served model's detector, with the service's overrides: what a request would get.
    s = Settings()
    manifest = ModelManifest.load(
        resolve_model_dir(s.model_store, s.model_name, s.model_version) / MANIFEST_FILENAME
    )
    _DETECTOR = FaceDetector(manifest.detector.model_copy(update=s.detector_overrides()))


def _count(paths: list[str]) -> list[tuple[str, int]]:
    from agelens.imaging import decode_image

    assert _DETECTOR is not None
    return [(p, len(_DETECTOR.detect(decode_image(Path(p).read_bytes())))) for p in paths]


def main() -> None:
    root = Path(sys.argv[1])
    files = sorted(str(p) for p in root.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    chunks = [files[i : i + 200] for i in range(0, len(files), 200)]
    t0 = time.time()
    with ProcessPoolExecutor(2, mp_context=get_context("spawn"), initializer=_init) as pool:
        results = [r for chunk in pool.map(_count, chunks) for r in chunk]
    found = sum(n > 0 for _, n in results)
    print(
        json.dumps(
            {
                "folder": str(root),
                "images": len(results),
                "with_a_face": found,
                "detection_rate": round(found / len(results), 5),
                "more_than_one_face": sum(n > 1 for _, n in results),
                "missed": [Path(p).name for p, n in results if n == 0],
                "seconds": round(time.time() - t0, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
