"""Training takes the cores other work leaves free, unless CARE_NUM_THREADS says otherwise."""

from __future__ import annotations

import os

import pytest

from care_companion.training import threads


@pytest.mark.parametrize(("busy", "expected"), [(0.0, 2), (0.5, 2), (0.8, 1), (1.4, 1), (3.9, 1)])
def test_free_cores_leave_busy_cores_to_other_work(monkeypatch: pytest.MonkeyPatch, busy: float, expected: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert threads.free_cores(busy) == expected


def test_a_configured_thread_count_wins() -> None:
    assert threads.training_threads(3) == 3


def test_others_busy_leaves_this_process_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the sample the machine used 1.5 cores' worth of ticks, 0.5 of them ours: others use 1 core."""
    hz = os.sysconf("SC_CLK_TCK")
    machine = iter([1000, 1000 + int(1.5 * hz)])
    own = iter([10, 10 + int(0.5 * hz)])
    clock = iter([100.0, 101.0])
    monkeypatch.setattr(threads, "_machine_busy_ticks", lambda: next(machine))
    monkeypatch.setattr(threads, "_own_ticks", lambda: next(own))
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    assert threads.others_busy(1.0) == pytest.approx(1.0, abs=0.02)


def test_others_busy_reads_this_machine() -> None:
    busy = threads.others_busy(0.2)
    assert 0.0 <= busy <= len(os.sched_getaffinity(0)) + 0.5
