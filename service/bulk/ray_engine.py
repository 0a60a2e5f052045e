"""The Ray engine: the same job on a Ray cluster, with Ray Data's `map_batches` over an actor
pool; each actor holds one estimator (one model, one detector), as a local worker does.

Ray is an optional extra (`pip install ".[ray]"`); the service never imports this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from service.bulk.rows import COLUMNS, SCHEMA, Row, rows_for_images
from service.settings import Settings


class EstimatorActor:
    """A Ray Data callable class: built once per actor, then called with batches of paths."""

    def __init__(self, settings_json: str) -> None:
        from service.estimator import load_estimator

        self.estimator = load_estimator(Settings.model_validate_json(settings_json))

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        rows = rows_for_images(self.estimator, [str(p) for p in batch["path"]])
        # A table with the job's schema: typed columns and real nulls, not numpy's NaN.
        return pa.Table.from_pylist(rows, schema=SCHEMA)


def run_ray(
    batches: list[list[str]], settings: Settings, workers: int, address: str | None
) -> Iterator[tuple[list[str], list[Row]]]:
    """Rows of every batch, streamed back as Ray Data produces them. Each yielded group holds the
    complete rows of the images it names (an image's rows never straddle two groups)."""
    import ray

    if not ray.is_initialized():
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, **quiet)
    context = ray.data.DataContext.get_current()
    # agelens batch draws its own bar (images/s, ETA); Ray's per-operator bars would interleave.
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    paths = [p for b in batches for p in b]
    if not paths:
        return
    batch_size = max(len(b) for b in batches)
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, len(batches)))
    out = ds.map_batches(
        EstimatorActor,
        fn_constructor_args=(settings.model_dump_json(),),
        batch_size=batch_size,
        concurrency=workers,
        num_cpus=1,
    )
    for table in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = table.select(COLUMNS).to_pylist()
        yield sorted({r["path"] for r in rows}), rows
