"""Progress bars: silent when asked or when Settings.no_progress is set, and rendering their columns otherwise."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from care_companion.config import get_settings
from care_companion.progress import progress_bar


def test_no_progress_setting_and_disable_silence_the_bar(monkeypatch: pytest.MonkeyPatch):
    get_settings.cache_clear()
    monkeypatch.setenv("CARE_NO_PROGRESS", "1")
    assert progress_bar().disable
    monkeypatch.setenv("CARE_NO_PROGRESS", "0")
    assert not progress_bar().disable  # read when the bar is made, not cached
    assert progress_bar(disable=True).disable
    assert get_settings.cache_info().currsize == 0  # making bars fixed no process-wide settings


def test_bar_renders_description_count_and_times(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CARE_NO_PROGRESS", "0")
    out = io.StringIO()
    bar = progress_bar(console=Console(file=out, width=120, force_terminal=False, color_system=None))
    assert not bar.disable
    with bar:
        task = bar.add_task("importing", total=3)
        for _ in range(3):
            bar.advance(task)
    text = out.getvalue()
    assert "importing" in text and "3/3" in text and "ETA" in text and "0:00:00" in text
