"""Micro-batching: concurrent requests are gathered into one engine call without blocking the event loop.

Each request puts its preprocessed tensor on a queue and awaits a future. One collector task takes the first
waiting item, gathers more until the batch is full or ``max_wait_ms`` has passed, and runs the batch in a
dedicated inference thread (ONNX Runtime releases the GIL), so the event loop keeps accepting uploads while the
engine works. While one batch runs, the next one fills.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from care_companion.errors import ServiceUnavailable

Input = np.ndarray | dict[str, np.ndarray]  # one model input, or a feed of several (a multi-view study)
Output = np.ndarray | tuple[np.ndarray, ...]  # one output, or several (logits and embedding)
RunBatch = Callable[[Any], Output]
OnBatch = Callable[[int, float], None]


_STOP = object()  # put on the queue by close(): everything before it is still answered


@dataclass
class _Item:
    tensor: Input
    future: asyncio.Future[Any]


def stack(inputs: list[Input]) -> Input:
    """Single inputs (without batch axis) as one batch: arrays stacked, feeds stacked input by input."""
    feeds = [item for item in inputs if isinstance(item, dict)]
    if feeds:
        return {name: np.stack([feed[name] for feed in feeds]) for name in feeds[0]}
    return np.stack([item for item in inputs if isinstance(item, np.ndarray)])


def rows(outputs: Output) -> list[Any]:
    """Per-item rows of a batch's output: arrays' rows, or for several outputs a tuple of rows per item."""
    if isinstance(outputs, tuple):
        return list(zip(*outputs, strict=True))
    return list(outputs)


class MicroBatcher:
    """Gathers single inputs into batches for ``run_batch`` (a blocking function [N, ...] -> [N, ...], or to a
    tuple of such outputs); an input may also be a feed of several named arrays, stacked name by name."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int = 1024,
        on_batch: OnBatch | None = None,
        name: str = "engine",
    ) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.name = name
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Inputs waiting for the engine."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the collector task on the running event loop."""
        if self._task is not None:
            return
        self._queue = asyncio.Queue()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.name}")

    async def submit(self, tensor: Input) -> Any:
        """Run one input (without its batch axis) through the engine; returns its output row (a tuple of rows
        when ``run_batch`` returns several outputs)."""
        if self._queue is None or self._closed:
            raise ServiceUnavailable(f"the {self.name} engine is not running", code="model_unavailable")
        if self._queue.qsize() >= self.max_queue:
            raise ServiceUnavailable(
                f"the {self.name} engine has {self._queue.qsize()} images waiting; retry shortly", code="overloaded"
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(tensor, future))
        return await future

    async def close(self) -> None:
        """Answer every input already accepted, then stop the collector and the inference thread."""
        self._closed = True
        if self._queue is not None and self._task is not None and not self._task.done():
            self._queue.put_nowait(_STOP)
            await self._task
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def _gather(self, queue: asyncio.Queue[Any]) -> tuple[list[_Item], bool]:
        """The next batch, and whether the stop marker came after it."""
        first = await queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    async def _collect(self) -> None:
        assert self._queue is not None and self._pool is not None
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            batch, stop = await self._gather(self._queue)
            live = [item for item in batch if not item.future.done()]  # a client may have gone away
            if not live:
                continue
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._pool, self.run_batch, stack([i.tensor for i in live]))
            except Exception as exc:  # the engine failing must fail these requests, not the collector
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(live), time.perf_counter() - started)
            for item, row in zip(live, rows(outputs), strict=True):
                if not item.future.done():
                    item.future.set_result(row)
