"""Where a server worker's CPU goes under load: py-spy samples `agelens serve` (one worker) while
the aiohttp closed loop of load_test.py drives it with the one-face 640x480 photo.

The in-process profile (profile_estimate.py) cannot see the HTTP side: uvicorn, FastAPI's
dependency solving and serialisation, multipart parsing, thread hand-offs. This one does.
Samples of idle threads (the thread pool waiting for work, the event loop waiting in epoll) are
dropped, so the shares are of the CPU the worker actually used.

    .venv/bin/python benchmarks/profile_server.py > benchmarks/results/profile_server.txt
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import photo, server
from load_test import closed_loop

# Leaf frames where a thread waits rather than computes.
IDLE_LEAVES = ("Condition.wait", "Runner.run", "WorkerThread.run", "select", "_worker")
# Frames at the bottom of every stack: 100 % inclusive, and no information.
WRAPPERS = {"thread", "Thread._bootstrap", "Thread._bootstrap_inner", "_run_module_as_main", "_run_code"}
WRAPPERS |= {"<module>", "main", "cmd_serve", "serve", "Server.run", "asyncio_run", "Runner.run"}


def frame_name(frame: str) -> str:
    return frame.split(" (")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", default="auto", choices=["auto", "short", "full"])
    ap.add_argument("--variant", default="auto", choices=["auto", "fp32", "int8"])
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    env = {"AGELENS_DETECTOR_MODEL": args.detector, "AGELENS_MODEL_VARIANT": args.variant}
    with tempfile.TemporaryDirectory() as tmp, server(1, env) as srv:
        raw = Path(tmp) / "raw.txt"
        uvloop.run(closed_loop(srv.url, photo(), 2, 3))
        cmd = [spy, "record", "-p", str(srv.pid), "-d", str(args.seconds), "-r", "200", "--threads"]
        rec = subprocess.Popen(
            [*cmd, "-f", "raw", "-o", str(raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        load = uvloop.run(closed_loop(srv.url, photo(), 2, args.seconds + 2))
        rec.wait()
        lines = raw.read_text().splitlines()
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    busy = 0
    for line in lines:
        stack, count = line.rsplit(" ", 1)
        frames = [frame_name(f) for f in stack.split(";")]
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        n = int(count)
        busy += n
        leaves[frames[-1]] += n
        for name in set(frames) - WRAPPERS:
            inclusive[name] += n
    print(f"agelens serve, 1 worker, detector {args.detector}, model {args.variant}; closed loop, 2 clients")
    print(f"{load['throughput_rps']} req/s during the profile; {busy} busy samples at 200 Hz\n")
    print("share of busy CPU, inclusive (a function and everything it calls):")
    for name, n in inclusive.most_common(args.top):
        print(f"  {100 * n / busy:5.1f} %  {name}")
    print("\nshare of busy CPU, self (the leaf frame):")
    for name, n in leaves.most_common(args.top // 2):
        print(f"  {100 * n / busy:5.1f} %  {name}")


if __name__ == "__main__":
    main()
