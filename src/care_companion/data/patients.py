"""Recognise where a radiograph came from, and which patient it shows, from its file name.

Public chest X-ray sets encode this in names: Kermany's ``person123_bacteria_456`` and
``NORMAL2-IM-0007-0001``, Shenzhen's ``CHNCXR_0273_0``, Montgomery's ``MCUCXR_0001_0``. Grouping by
patient across sources keeps one child's films out of two splits even when two sources share them.
"""

from __future__ import annotations

import re

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(person\d+)_", re.IGNORECASE), "kermany"),
    (re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-", re.IGNORECASE), "kermany"),
    (re.compile(r"^(CHNCXR_\d+)_", re.IGNORECASE), "shenzhen"),
    (re.compile(r"^(MCUCXR_\d+)_", re.IGNORECASE), "montgomery"),
    (re.compile(r"^(synth-patient\d+)_", re.IGNORECASE), "synthetic"),
    (re.compile(r"^(\d{4})_\d+_\d+_", re.IGNORECASE), "grazpedwri"),
    (re.compile(r"(?:^|[_-])(patient[_-]?[A-Za-z0-9]+)", re.IGNORECASE), "named"),
]
_ORIGIN_ONLY: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(Normal|Tuberculosis)-\d+", re.IGNORECASE), "tb-database"),
    (re.compile(r"^\d+$"), "numbered"),
]


def origin_and_patient(stem: str) -> tuple[str, str | None]:
    """The inferred origin of an image and its patient id (``None`` when the name carries none).

    Args:
        stem: the file name without its extension.
    """
    for pattern, origin in _PATTERNS:
        match = pattern.search(stem)
        if match:
            return origin, f"{origin}:{match.group(1).lower()}"
    for pattern, origin in _ORIGIN_ONLY:
        if pattern.search(stem):
            return origin, None
    return "other", None
