"""Profile one bulk-inference worker (service/bulk/rows.py) on bulk_throughput.py's photos.

Where a bulk worker's time goes bounds what bulk inference can gain over the HTTP path: both
run the same decode, detection, alignment, quality and model, so only what HTTP adds on top
(request parsing, JSON, the load generator) can be saved. pyinstrument's text report:

    .venv/bin/python benchmarks/profile_bulk.py --images 600 > benchmarks/results/profile_bulk.txt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("GLOG_minloglevel", "2")

from bulk_throughput import photos  # noqa: E402
from pyinstrument import Profiler  # noqa: E402

from service.bulk.rows import rows_for_images  # noqa: E402
from service.estimator import load_estimator  # noqa: E402
from service.settings import Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32, help="paths per call, as `agelens batch` sends them")
    args = ap.parse_args()
    estimator = load_estimator(Settings())
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, blob in enumerate(photos(args.images)):
            path = Path(tmp) / f"{i:05d}.jpg"
            path.write_bytes(blob)
            paths.append(str(path))
        rows_for_images(estimator, paths[: args.batch])  # warm caches and allocators
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for i in range(0, len(paths), args.batch):
            rows_for_images(estimator, paths[i : i + args.batch])
        profiler.stop()
    print(f"{len(paths)} images, one process, batches of {args.batch}")
    print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
