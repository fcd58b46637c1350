"""MicroBatcher: concurrent submits share engine calls, answers go back to their callers, failures stay local."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from care_companion.errors import ServiceUnavailable
from care_companion.serving.batcher import MicroBatcher

TIMEOUT = 10.0  # no test may hang: every await on the batcher is bounded


class Recorder:
    """A run_batch that doubles its input and records every batch it saw."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[np.ndarray] = []
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        return batch * 2


def _tag(i: int) -> np.ndarray:
    """An input whose every value is ``i``, so its output (2 * i) tells whose it is."""
    return np.full((3,), float(i), dtype=np.float32)


async def _submit_all(batcher: MicroBatcher, tags: range) -> list[np.ndarray]:
    return await asyncio.wait_for(asyncio.gather(*(batcher.submit(_tag(i)) for i in tags)), TIMEOUT)


def test_concurrent_submits_are_batched_up_to_max_batch_and_answered_in_place() -> None:
    run = Recorder(delay=0.01)
    sizes: list[int] = []

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(
            run, max_batch=4, max_wait_ms=50, on_batch=lambda size, seconds: sizes.append(size), name="t"
        )
        batcher.start()
        try:
            return await _submit_all(batcher, range(10))
        finally:
            await batcher.close()

    outputs = asyncio.run(main())
    for i, row in enumerate(outputs):  # every caller gets its own row back
        np.testing.assert_array_equal(row, np.full((3,), 2.0 * i))
    assert all(len(b) <= 4 for b in run.batches)
    assert sum(len(b) for b in run.batches) == 10
    assert len(run.batches) < 10, "concurrent requests were not gathered into batches"
    assert max(len(b) for b in run.batches) == 4
    assert sorted(v for b in run.batches for v in b[:, 0]) == list(range(10))  # each input ran exactly once
    assert sizes == [len(b) for b in run.batches]  # on_batch saw every engine call's size
    assert all(name.startswith("infer-t") for name in run.threads)  # the engine ran off the event loop


def test_lone_request_runs_after_max_wait_instead_of_waiting_for_company() -> None:
    run = Recorder()

    async def main() -> tuple[np.ndarray, float]:
        batcher = MicroBatcher(run, max_batch=64, max_wait_ms=30)
        batcher.start()
        try:
            started = time.perf_counter()
            out = await asyncio.wait_for(batcher.submit(_tag(7)), TIMEOUT)
            return out, time.perf_counter() - started
        finally:
            await batcher.close()

    out, elapsed = asyncio.run(main())
    np.testing.assert_array_equal(out, np.full((3,), 14.0))
    assert [len(b) for b in run.batches] == [1]
    assert 0.025 <= elapsed < 2.0  # it waited ~max_wait for others, then ran alone


def test_engine_failure_fails_that_batch_and_batcher_keeps_serving() -> None:
    calls: list[int] = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("engine exploded")
        return batch * 2

    async def main() -> tuple[list[object], np.ndarray]:
        batcher = MicroBatcher(flaky, max_batch=8, max_wait_ms=20)
        batcher.start()
        try:
            first = await asyncio.wait_for(
                asyncio.gather(*(batcher.submit(_tag(i)) for i in range(3)), return_exceptions=True), TIMEOUT
            )
            later = await asyncio.wait_for(batcher.submit(_tag(5)), TIMEOUT)
            return list(first), later
        finally:
            await batcher.close()

    first, later = asyncio.run(main())
    assert calls[0] == 3
    assert all(isinstance(r, RuntimeError) and str(r) == "engine exploded" for r in first)
    np.testing.assert_array_equal(later, np.full((3,), 10.0))


def test_close_finishes_queued_work() -> None:
    run = Recorder(delay=0.3)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(run, max_batch=2, max_wait_ms=1)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(_tag(i))) for i in range(6)]
        await asyncio.sleep(0.01)  # every submit enqueued, the first batch running
        assert batcher.depth > 0
        await asyncio.wait_for(batcher.close(), TIMEOUT)
        return await asyncio.wait_for(asyncio.gather(*tasks), 2.0)  # TimeoutError: inputs left unanswered

    done = asyncio.run(main())
    assert [float(row[0]) for row in done] == [2.0 * i for i in range(6)]


def test_close_answers_an_input_the_engine_is_running() -> None:
    run = Recorder(delay=0.2)

    async def main() -> np.ndarray:
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=1)
        batcher.start()
        task = asyncio.create_task(batcher.submit(_tag(3)))
        await asyncio.sleep(0.05)  # the collector has taken it: the queue is empty, the engine is running
        assert batcher.depth == 0 and not task.done()
        await asyncio.wait_for(batcher.close(), TIMEOUT)
        return await asyncio.wait_for(task, 2.0)

    np.testing.assert_array_equal(asyncio.run(main()), np.full((3,), 6.0))


def test_submit_after_close_or_before_start_is_unavailable() -> None:
    async def main() -> tuple[ServiceUnavailable, ServiceUnavailable]:
        batcher = MicroBatcher(Recorder(), max_batch=2, max_wait_ms=1, name="chest")
        with pytest.raises(ServiceUnavailable) as before:
            await batcher.submit(_tag(1))
        batcher.start()
        np.testing.assert_array_equal(await asyncio.wait_for(batcher.submit(_tag(1)), TIMEOUT), np.full((3,), 2.0))
        await batcher.close()
        with pytest.raises(ServiceUnavailable) as after:
            await batcher.submit(_tag(2))
        return before.value, after.value

    before, after = asyncio.run(main())
    assert before.code == after.code == "model_unavailable"
    assert "chest" in after.detail


def test_queue_over_max_queue_is_refused_as_overloaded() -> None:
    release = threading.Event()

    def blocked(batch: np.ndarray) -> np.ndarray:
        release.wait(TIMEOUT)
        return batch * 2

    async def main() -> tuple[ServiceUnavailable, list[np.ndarray], int]:
        batcher = MicroBatcher(blocked, max_batch=1, max_wait_ms=0, max_queue=2, name="chest")
        batcher.start()
        running = asyncio.create_task(batcher.submit(_tag(0)))
        for _ in range(100):  # wait until the engine holds the first input and the queue is empty
            await asyncio.sleep(0.01)
            if batcher.depth == 0:
                break
        waiting = [asyncio.create_task(batcher.submit(_tag(i))) for i in (1, 2)]
        await asyncio.sleep(0.01)
        depth = batcher.depth
        with pytest.raises(ServiceUnavailable) as info:
            await batcher.submit(_tag(3))
        release.set()
        done = await asyncio.wait_for(asyncio.gather(running, *waiting), TIMEOUT)
        await batcher.close()
        return info.value, done, depth

    refused, done, depth = asyncio.run(main())
    assert depth == 2
    assert refused.code == "overloaded"
    assert "2 images waiting" in refused.detail
    assert [float(row[0]) for row in done] == [0.0, 2.0, 4.0]  # the queued ones were still served


def test_a_cancelled_caller_does_not_break_its_batch() -> None:
    run = Recorder()

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(run, max_batch=8, max_wait_ms=30)
        batcher.start()
        try:
            gone = asyncio.create_task(batcher.submit(_tag(1)))
            stay = [asyncio.create_task(batcher.submit(_tag(i))) for i in (2, 3)]
            await asyncio.sleep(0)
            gone.cancel()  # the client went away while its input waited for company
            return await asyncio.wait_for(asyncio.gather(*stay), TIMEOUT)
        finally:
            await batcher.close()

    out = asyncio.run(main())
    assert [float(r[0]) for r in out] == [4.0, 6.0]
    assert sorted(float(v) for b in run.batches for v in b[:, 0]) == [2.0, 3.0]  # the cancelled one never ran
