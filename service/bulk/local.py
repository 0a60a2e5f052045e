"""The in-process engine: one worker process per core, each holding one estimator (the service's
face path and model), fed batches of paths in order."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

from service.bulk.rows import Row, rows_for_images
from service.estimator import Estimator, load_estimator
from service.settings import Settings

_ESTIMATOR: Estimator | None = None


def _init_worker(settings_json: str) -> None:
    global _ESTIMATOR
    os.environ.setdefault("GLOG_minloglevel", "2")
    _ESTIMATOR = load_estimator(Settings.model_validate_json(settings_json))


def _run(paths: list[str]) -> list[Row]:
    assert _ESTIMATOR is not None
    return rows_for_images(_ESTIMATOR, paths)


def run_local(
    batches: list[list[str]], settings: Settings, workers: int
) -> Iterator[tuple[list[str], list[Row]]]:
    """Each batch's paths with their rows, in the order of `batches`.

    At most two batches per worker are queued ahead, so an interrupted run has little in flight
    and the memory of a job of any size stays flat.
    """
    # spawn: a forked child would inherit the parent's ONNX Runtime and OpenCV thread pools.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(settings.model_dump_json(),)
    ) as pool:
        pending: list[tuple[list[str], Future[list[Row]]]] = []
        it = iter(batches)
        try:
            for batch in it:
                pending.append((batch, pool.submit(_run, batch)))
                if len(pending) >= 2 * workers:
                    paths, fut = pending.pop(0)
                    yield paths, fut.result()
            while pending:
                paths, fut = pending.pop(0)
                yield paths, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()
