"""Soak: a fixed request rate for ten minutes against `agelens serve`, sampling the server's memory.

The rate defaults to 80 % of the closed-loop maximum that load_test.py measured with the same
(aiohttp) generator for the same number of workers (benchmarks/results/load.json); by default 2
workers with one detector each, the fastest configuration on 2 cores. The resident memory of
the server process and its children is summed every 5 s, with the answers and refusals so far;
the result gives start (after warm-up), peak and end, the whole curve, and every non-200 answer
(there should be none), and the CPU seconds each server process spent: how the work split
between the workers.

    .venv/bin/python benchmarks/soak.py > benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import photo, server, tree_cpu_s, tree_rss_mb
from load_test import Recorder, open_loop

RESULTS = Path(__file__).resolve().parent / "results"


def default_rate(workers: int, detectors: int) -> float:
    load = json.loads((RESULTS / "load.json").read_text())
    run = next(
        r for r in load["runs"] if r["workers"] == workers and r.get("detector_instances") == detectors
    )
    # The soak drives the server with the Python generator, which shares the 2 cores and costs
    # more CPU per request than wrk: 80 % of what the server reached *with that generator*.
    closed = next(c for c in run["closed_loop"] if c["generator"] == "aiohttp")
    return round(0.8 * closed["throughput_rps"], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--detectors", type=int, default=1, help="AGELENS_DETECTOR_INSTANCES per worker")
    ap.add_argument("--rate", type=float, help="req/s (default: 80 %% of load.json's maximum)")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--every", type=float, default=5.0, help="seconds between memory samples")
    ap.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for the server"
    )
    args = ap.parse_args()
    rate = args.rate or default_rate(args.workers, args.detectors)
    curve: list[dict[str, float]] = []
    extra_env = dict(item.split("=", 1) for item in args.env)
    with server(args.workers, {"AGELENS_DETECTOR_INSTANCES": str(args.detectors), **extra_env}) as srv:

        def sample(elapsed: float, rec: Recorder) -> None:
            if not curve or elapsed - curve[-1]["t"] >= args.every:
                # Answers so far, and how many were not 200: when the refusals happened.
                answered = sum(rec.statuses.values())
                curve.append(
                    {
                        "t": round(elapsed, 1),
                        "rss_mb": tree_rss_mb(srv.pid)["total"],
                        "answered": answered,
                        "refused": answered - rec.statuses.get("200", 0),
                    }
                )

        cpu_before = tree_cpu_s(srv.pid)
        result = uvloop.run(open_loop(srv.url, photo(), rate, args.seconds, sampler=sample))
        cpu_after = tree_cpu_s(srv.pid)
        curve.append({"t": round(args.seconds, 1), "rss_mb": tree_rss_mb(srv.pid)["total"]})
        processes = tree_rss_mb(srv.pid)
    # How the work split between the workers: SO_REUSEPORT spreads connections, not requests.
    cpu_s = {k: round(v - cpu_before.get(k, 0.0), 1) for k, v in cpu_after.items()}
    rss = [c["rss_mb"] for c in curve]
    minute = max(1, int(60 / args.every))
    out = {
        "what": "POST /estimate, one-face 640x480 JPEG, fixed-rate schedule, server on loopback",
        "workers": args.workers,
        "detector_instances": args.detectors,
        "server_env": extra_env,
        "offered_rps": rate,
        "seconds": args.seconds,
        "load": result,
        "rss_mb": {
            "start": rss[0],
            "peak": max(rss),
            "end": rss[-1],
            "first_minute_mean": round(sum(rss[:minute]) / len(rss[:minute]), 1),
            "last_minute_mean": round(sum(rss[-minute:]) / len(rss[-minute:]), 1),
            "per_process_at_end": processes,
        },
        "cpu_seconds_per_process": cpu_s,
        "curve": curve,
    }
    print(
        f"soak {rate} req/s x {args.seconds:.0f} s: {result['ok']} ok, {result['errors']} errors, "
        f"p99 {result['p99_ms']} ms; RSS start {rss[0]} peak {max(rss)} end {rss[-1]} MiB",
        file=sys.stderr,
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
