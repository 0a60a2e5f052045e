"""Profile the service's hot path (decode -> detect -> align -> infer -> serialise) with pyinstrument.

Uses the same one-face 640x480 photo as e2e_latency.py and writes pyinstrument's text report, so
the profile that motivated a change to the hot path is committed next to the change.

    .venv/bin/python benchmarks/profile_estimate.py > benchmarks/results/profile_estimate.txt
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_minloglevel", "2")

from pyinstrument import Profiler  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from common import photo  # noqa: E402

from service.app import load_estimator  # noqa: E402
from service.settings import Settings  # noqa: E402


def main(n: int = 300) -> None:
    est = load_estimator(Settings())
    data = photo()
    for _ in range(20):
        est.estimate(data)
    profiler = Profiler(interval=0.0005)
    profiler.start()
    for _ in range(n):
        est.estimate(data).model_dump_json(exclude_none=True)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
