"""A process-pool map with a progress bar, for decoding many files on every core."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from care_companion.progress import progress_bar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, description: str) -> Iterator[R]:
    """``map(fn, items)`` in input order over ``workers`` processes (in-process for one worker or few items).

    ``fn`` must be a module-level function and its arguments and results picklable.
    """
    items = list(items)
    if workers <= 1 or len(items) < 64:
        with progress_bar() as bar:
            for item in bar.track(items, description=description):
                yield fn(item)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool, progress_bar() as bar:
        yield from bar.track(pool.map(fn, items, chunksize=16), total=len(items), description=description)
