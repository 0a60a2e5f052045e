"""Three replicas behind HAProxy (deploy/compose/compose.yaml): how requests spread over them,
and what a client sees when one replica is killed in the middle of a load run.

    eval "$(../shared/tools/docker-offline.sh)"      # where no registry is reachable
    .venv/bin/python benchmarks/failover.py --out benchmarks/results/failover.json

Builds and starts the stack, then runs the same load four times: one replica killed, or the load
balancer restarted, each with the client's retry policy off and on. Each run sends one-face
photos from `--clients` threads for `--seconds`, and halfway through SIGKILLs one replica's
container (a crash: no graceful shutdown, requests in flight on it are cut) or restarts HAProxy.
Counted per run: requests, successes, failures the caller saw, the client's retries, and which
replica answered (HAProxy's X-Served-By header), before and after the kill.

On this 2-core machine the three replicas share two cores: the figures show spread and failover,
not a speed-up (README "Scaling out").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import photo  # noqa: E402

from agelens.client import AgelensClient, AgelensError, RetryPolicy  # noqa: E402

COMPOSE = ["docker", "compose", "-f", str(REPO / "deploy" / "compose" / "compose.yaml")]


def compose(*args: str, capture: bool = False) -> str:
    out = subprocess.run([*COMPOSE, *args], check=True, capture_output=capture, text=True)
    return out.stdout if capture else ""


def backends(stats_url: str) -> dict[str, str]:
    """HAProxy's view of each replica: server name -> UP / DOWN / MAINT."""
    text = httpx.get(stats_url, timeout=2).text
    header = text.lstrip("# ").splitlines()[0].split(",")
    out = {}
    for line in text.splitlines()[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "agelens" and row.get("svname") not in ("BACKEND", "FRONTEND"):
            out[row["svname"]] = row.get("status", "")
    return out


def wait_all_up(stats_url: str, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if sum(s == "UP" for s in backends(stats_url).values()) == n:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"not all {n} replicas came up: {backends(stats_url)}")


class Recording(httpx.HTTPTransport):
    """Notes which replica answered each response (HAProxy's X-Served-By)."""

    def __init__(self) -> None:
        super().__init__()
        self.served: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = super().handle_request(request)
        with self.lock:
            self.served.append((time.time(), resp.headers.get("x-served-by", "?")))
        return resp


def load_run(
    url: str, image: bytes, clients: int, seconds: float, retry: RetryPolicy | None, target: str
) -> dict:
    stop = time.time() + seconds
    kill_at = time.time() + seconds / 2
    results: list[tuple[float, str]] = []  # (time, "ok" or the error)
    lock = threading.Lock()
    transports, retries = [], []

    def worker() -> None:
        transport = Recording()
        transports.append(transport)
        with AgelensClient(url, transport=transport, retry=retry, timeout=30) as client:
            while time.time() < stop:
                try:
                    r = client.estimate(image, distribution=False)
                    outcome = "ok" if len(r.faces) == 1 else "wrong_answer"
                except AgelensError as exc:
                    outcome = type(exc).__name__ + (f" {exc.status}" if hasattr(exc, "status") else "")
                with lock:
                    results.append((time.time(), outcome))
            retries.append(client.retries_made)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, kill_at - time.time()))
    killed = time.time()
    if target == "replica":
        victim = compose("ps", "-q", "agelens", capture=True).split()[0]
        subprocess.run(["docker", "kill", "--signal", "KILL", victim], check=True, capture_output=True)
    else:
        # The load balancer itself restarted (a config reload gone wrong, a node drained): every
        # connection drops and for a few seconds no replica is marked up.
        victim = compose("ps", "-q", "lb", capture=True).split()[0]
        subprocess.run(["docker", "restart", "-t", "0", victim], check=True, capture_output=True)
    for t in threads:
        t.join()
    served = sorted(s for tr in transports for s in tr.served)
    outcomes = Counter(o for _, o in results)
    return {
        "retry_policy": None if retry is None else retry.__dict__,
        "requests": len(results),
        "succeeded": outcomes["ok"],
        "failed": len(results) - outcomes["ok"],
        "failures": {k: v for k, v in outcomes.items() if k != "ok"},
        "failed_after_kill": sum(1 for t, o in results if o != "ok" and t >= killed),
        "client_retries": sum(retries),
        "requests_per_second": round(len(results) / seconds, 1),
        "served_before_kill": dict(sorted(Counter(s for t, s in served if t < killed).items())),
        "served_after_kill": dict(sorted(Counter(s for t, s in served if t >= killed).items())),
        "killed": target,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", action="store_true", help="leave the stack running")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    url, stats = f"http://127.0.0.1:{args.port}", "http://127.0.0.1:8404/stats;csv"
    image = photo()
    compose("up", "-d", *([] if args.no_build else ["--build"]))
    report: dict = {"replicas": 3, "clients": args.clients, "seconds": args.seconds, "runs": {}}
    try:
        # Retries that outlast a load balancer's restart (about 3 s here): 0.2 s doubling, 6 times.
        patient = RetryPolicy(retries=6, backoff=0.2)
        runs = [
            ("replica_killed_client_retries_off", None, "replica"),
            ("replica_killed_client_retries_on", patient, "replica"),
            ("lb_restarted_client_retries_off", None, "lb"),
            ("lb_restarted_client_retries_on", patient, "lb"),
        ]
        for name, retry, target in runs:
            compose("up", "-d")  # brings the killed replica back
            wait_all_up(stats, 3)
            report["runs"][name] = rep = load_run(url, image, args.clients, args.seconds, retry, target)
            print(name, json.dumps(rep), file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            compose("down")
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
