"""Loading the served model and its face detector into an Estimator (one per process)."""

from __future__ import annotations

import cv2

from service.estimator import Estimator
from service.model import AgeModel, resolve_model_dir
from service.settings import Settings


def load_estimator(settings: Settings) -> Estimator:
    # OpenCV's default pool (one thread per core) splits full-image operations across threads
    # that spin after every job: CPU the other worker needs, since each worker already keeps one
    # core busy (benchmarks/results/opencv_threads.json: 1.8 ms of CPU per request beyond wall
    # time with the previous decode's colour conversion on the pool; none with one thread).
    cv2.setNumThreads(settings.opencv_threads or -1)
    model_dir = resolve_model_dir(settings.model_store, settings.model_name, settings.model_version)
    model = AgeModel(model_dir, settings.model_variant)
    model.prepare(threads=settings.ort_threads)
    estimator = Estimator(model, settings)
    estimator.warm_up()
    return estimator
