"""A bulk job from start to end: expand the inputs, skip what the output already holds, run an
engine batch by batch, append each batch's rows, and report progress with tqdm."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from service.bulk.inputs import expand_inputs
from service.bulk.writers import open_writer
from service.settings import Settings


@dataclass
class JobSummary:
    images: int  # named by the inputs
    skipped: int  # already in the output (a resumed run)
    processed: int
    faces: int
    errors: int  # images that gave an error row (unreadable, not an image, no face)
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def run_job(
    inputs: list[str],
    out: Path,
    settings: Settings,
    engine: str = "local",
    workers: int = 0,
    batch_size: int = 32,
    address: str | None = None,
    progress: bool = True,
) -> JobSummary:
    """Score every image the inputs name into `out`. A second run with the same `out` skips the
    images already there, so an interrupted job resumes where it stopped (losing at most the
    batches that were in progress)."""
    workers = workers or len(os.sched_getaffinity(0)) or 1
    paths = expand_inputs(inputs)
    writer = open_writer(out)
    done = writer.done_paths()
    todo = [p for p in paths if p not in done]
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    if engine == "ray":
        from service.bulk.ray_engine import run_ray

        stream = run_ray(batches, settings, workers, address)
    elif engine == "local":
        from service.bulk.local import run_local

        stream = run_local(batches, settings, workers)
    else:
        raise ValueError(f"unknown engine {engine!r}: local or ray")
    t0 = time.perf_counter()
    processed = faces = errors = 0
    bar = tqdm(total=len(todo), unit="img", disable=not progress, dynamic_ncols=True, smoothing=0.1)
    try:
        for batch_paths, rows in stream:
            writer.write(rows)
            processed += len(batch_paths)
            faces += sum(r["face"] is not None for r in rows)
            errors += sum(r["error"] is not None for r in rows)
            bar.update(len(batch_paths))
            bar.set_postfix(faces=faces, errors=errors, refresh=False)
    finally:
        bar.close()
        writer.close()
    return JobSummary(len(paths), len(paths) - len(todo), processed, faces, errors, time.perf_counter() - t0)
