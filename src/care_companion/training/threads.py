"""How many CPU threads a training process should use.

More compute threads than free cores is far worse than fewer: OpenMP threads wait on each other at every
barrier. Measured on this project's 2-core machine with another job busy (resnet18, 128 px, batch 32,
bfloat16): 42 images/s with one thread, 4 with two. So unless ``CARE_NUM_THREADS`` says otherwise, training
takes the cores that other processes leave free, measured over a short sample of ``/proc/stat`` (this
process's own use left out), at least one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.5


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _machine_busy_ticks() -> int | None:
    """Busy clock ticks of all cores since boot (``/proc/stat``), None where there is no such file."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle


def _own_ticks() -> int:
    """Clock ticks this process (all its threads) has used."""
    times = os.times()
    return round((times.user + times.system) * os.sysconf("SC_CLK_TCK"))


def others_busy(sample: float = SAMPLE_SECONDS) -> float:
    """How many cores other processes keep busy now (0.0 where it cannot be measured)."""
    before, own_before = _machine_busy_ticks(), _own_ticks()
    if before is None:
        return 0.0
    started = time.monotonic()
    time.sleep(sample)
    after, own_after = _machine_busy_ticks(), _own_ticks()
    elapsed = time.monotonic() - started
    if after is None or elapsed <= 0:
        return 0.0
    ticks = (after - before) - (own_after - own_before)
    return max(0.0, ticks / (os.sysconf("SC_CLK_TCK") * elapsed))


def free_cores(busy: float | None = None) -> int:
    """Cores this process may run on that other work is not already using (at least 1)."""
    cores = _cores()
    used = others_busy() if busy is None else busy
    return max(1, min(cores, cores - int(used + 0.35)))


def training_threads(requested: int | None) -> int:
    """The torch thread count for training: ``requested`` (``CARE_NUM_THREADS``) when set, else :func:`free_cores`."""
    if requested:
        return requested
    threads = free_cores()
    log.info("training on %d CPU thread(s): the cores other work leaves free (CARE_NUM_THREADS overrides)", threads)
    return threads
