"""What the benchmarks share: the test photo and a real server process on loopback."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DATASET = Path(os.environ.get("AGELENS_UTKFACE", REPO.parent / "shared" / "datasets" / "utkface"))


def photo() -> bytes:
    """A one-face 640x480 JPEG: a UTKFace test-split face (age 35) pasted on a plain background."""
    rows = [r.split(",") for r in (REPO / "training/splits/utkface.csv").read_text().splitlines()[1:]]
    name = next(r[0] for r in rows if r[4] == "test" and r[1] == "35")
    face = Image.open(DATASET / name).convert("RGB").resize((180, 180))
    canvas = Image.new("RGB", (640, 480), (200, 205, 210))
    canvas.paste(face, (230, 120))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def dataset_images(dataset: str, split: str, n: int, seed: int = 0) -> list[tuple[Path, int]]:
    """`n` images of a registry dataset's split part, drawn at random (the same ones for the same
    seed), in file order, with their ages clipped to 0-100."""
    import numpy as np

    from training.data import read_split
    from training.datasets import load_registry

    entry = load_registry()[dataset]
    rows = [r for r in read_split(entry.split) if r.split == split]
    picks = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return [(entry.root / rows[i].filename, min(rows[i].age, 100)) for i in sorted(picks)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RunningServer:
    url: str
    pid: int


@contextmanager
def server(
    workers: int = 1, env: dict[str, str] | None = None, log_path: Path | None = None
) -> Iterator[RunningServer]:
    """`agelens serve` in a child process, as a user runs it; yields its URL once every worker is
    ready (several /ready answers in a row, since each request may land on another worker)."""
    port = free_port()
    full_env = {**os.environ, "GLOG_minloglevel": "2", **(env or {})}
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "agelens.cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=REPO,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, ok = time.time() + 120, 0
        while ok < 4 * workers:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server did not become ready (exit code {proc.poll()})")
            try:
                ok = ok + 1 if httpx.get(f"{url}/ready", timeout=2).status_code == 200 else 0
            except httpx.TransportError:
                ok = 0
            time.sleep(0.2)
        yield RunningServer(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path:
            log.close()  # type: ignore[union-attr]


def _tree(pid: int) -> list[psutil.Process]:
    """A process and all its children (uvicorn's supervisor and workers)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of a process and its children (uvicorn's supervisor and workers), in MiB."""
    per = {f"{p.pid}": p.memory_info().rss / 2**20 for p in _tree(pid)}
    return {"total": round(sum(per.values()), 1), **{k: round(v, 1) for k, v in per.items()}}


def tree_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of a process and each of its children, by pid."""
    return {f"{p.pid}": round(sum(p.cpu_times()[:2]), 2) for p in _tree(pid)}
