"""Shared benchmark plumbing: where results go and how a row lands in docs/BENCHMARKS.md."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
OUT = REPO / "bench-out"
DOC = REPO / "docs" / "BENCHMARKS.md"


def machine() -> str:
    """One line describing where a benchmark ran."""
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def write_result(name: str, result: dict[str, Any], *, command: str, markdown: str) -> Path:
    """Save a benchmark's JSON under bench-out/ and replace its section in docs/BENCHMARKS.md."""
    OUT.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    payload = {"name": name, "when": stamp, "command": command, "machine": machine(), **result}
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    section = f"{begin}\n{markdown.strip()}\n\n_Measured {stamp} on {machine()} with `{command}`._\n{end}"
    text = (
        DOC.read_text() if DOC.exists() else "# Benchmarks\n\nWritten by `make bench`; each section by its command.\n"
    )
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
    return path


def ci(report: dict[str, Any], key: str) -> str:
    """`` (low–high)``: the 95% bootstrap interval of ``key`` in an evaluation JSON, or nothing."""
    interval = report["intervals"].get(key)
    return f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else ""


def fmt(value: float | None) -> str:
    """A metric with three decimals, or n/a."""
    return "n/a" if value is None else f"{value:.3f}"


def group_rows(report: dict[str, Any], groups: tuple[str, ...]) -> list[str]:
    """Markdown rows (group | n | AUC | sensitivity | specificity) of an evaluation's per-group breakdowns."""
    return [
        f"| {name} | {g['n']} | {fmt(g['auc_abnormal'])} | {fmt(g['sensitivity_abnormal'])} | "
        f"{fmt(g['specificity_abnormal'])} |"
        for group in groups
        for name, g in report["by_group"].get(group, {}).items()
    ]
