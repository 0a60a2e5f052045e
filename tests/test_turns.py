"""LocalEngine's processing turns: at most one request per face detector runs at a time, first
come first served."""

from __future__ import annotations

import asyncio
import threading
import time

from service.engine import LocalEngine
from service.settings import Settings


class _SlowEstimator:
    def __init__(self) -> None:
        self.started: list[bytes] = []
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def estimate(self, data: bytes, include_distribution: bool) -> bytes:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append(data)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return data * 2


def _run(turns: int) -> tuple[list[bytes], _SlowEstimator]:
    async def main() -> tuple[list[bytes], _SlowEstimator]:
        engine = LocalEngine(Settings(detector_instances=turns))
        fake = _SlowEstimator()
        engine._estimator = fake
        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(engine.estimate(bytes([i]), True)))
            await asyncio.sleep(0)  # arrive one after another
        return list(await asyncio.gather(*tasks)), fake  # type: ignore[arg-type]

    return asyncio.run(main())


def test_requests_run_in_arrival_order_and_never_more_than_the_turns() -> None:
    results, fake = _run(1)
    assert results == [bytes([i]) * 2 for i in range(8)]
    assert fake.started == [bytes([i]) for i in range(8)] and fake.peak == 1
    results, fake = _run(2)
    assert fake.peak == 2 and fake.started[:2] == [b"\x00", b"\x01"]
    assert sorted(fake.started) == [bytes([i]) for i in range(8)]
