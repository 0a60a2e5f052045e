"""The processing turns: at most one request per face detector runs at a time, first come first served."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

from service.dependencies import run_in_turn


def test_requests_run_in_arrival_order_and_never_more_than_the_turns() -> None:
    started: list[int] = []
    running = 0
    peak = 0
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            started.append(i)
        time.sleep(0.02)
        with lock:
            running -= 1
        return i * 10

    async def main(turns: int) -> list[int]:
        request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(turns=asyncio.Semaphore(turns))))
        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(run_in_turn(request, work, i)))  # type: ignore[arg-type]
            await asyncio.sleep(0)  # arrive one after another
        return await asyncio.gather(*tasks)

    assert asyncio.run(main(1)) == [i * 10 for i in range(8)]
    assert started == list(range(8)) and peak == 1
    started.clear()
    peak = 0
    asyncio.run(main(2))
    assert peak == 2 and started[:2] == [0, 1] and sorted(started) == list(range(8))
