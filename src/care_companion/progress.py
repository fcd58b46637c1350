"""Rich progress bars with ETA, shared by every long-running step."""

from __future__ import annotations

import os
import sys

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(*, transient: bool = False, disable: bool = False) -> Progress:
    """A progress display with count, elapsed time and ETA; silent when asked, or when CARE_NO_PROGRESS is set."""
    disable = disable or bool(os.environ.get("CARE_NO_PROGRESS")) or "pytest" in sys.modules
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=transient,
        disable=disable,
    )
