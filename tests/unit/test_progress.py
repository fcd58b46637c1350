"""Progress bars: silent when asked or when Settings.no_progress is set, and rendering their columns otherwise."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from care_companion.config import get_settings
from care_companion.progress import progress_bar


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch):
    """Clear the cached settings around a test that changes CARE_NO_PROGRESS."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_no_progress_setting_and_disable_silence_the_bar(fresh_settings: pytest.MonkeyPatch):
    fresh_settings.setenv("CARE_NO_PROGRESS", "1")
    assert progress_bar().disable
    get_settings.cache_clear()
    fresh_settings.setenv("CARE_NO_PROGRESS", "0")
    assert not progress_bar().disable
    assert progress_bar(disable=True).disable


def test_bar_renders_description_count_and_times(fresh_settings: pytest.MonkeyPatch):
    fresh_settings.setenv("CARE_NO_PROGRESS", "0")
    out = io.StringIO()
    bar = progress_bar(console=Console(file=out, width=120, force_terminal=False, color_system=None))
    assert not bar.disable
    with bar:
        task = bar.add_task("importing", total=3)
        for _ in range(3):
            bar.advance(task)
    text = out.getvalue()
    assert "importing" in text and "3/3" in text and "ETA" in text and "0:00:00" in text
