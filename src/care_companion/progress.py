"""Rich progress bars with ETA, shared by every long-running step."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from care_companion.config import Settings


def progress_bar(*, transient: bool = False, disable: bool = False, console: Console | None = None) -> Progress:
    """A progress display with count, elapsed time and ETA.

    Args:
        transient: remove the bars from the terminal when done.
        disable: stay silent; the display is also silent when ``Settings.no_progress`` is set
            (``CARE_NO_PROGRESS``, read when the bar is made: making one never fixes the process's settings).
        console: where to draw (default: rich's global console, on the terminal).
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable or Settings().no_progress,
    )
