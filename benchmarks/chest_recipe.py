"""The default chest recipe end to end on real data: import cxr-real + kermany-train (+ FracAtlas as non-chest), train.

Reports the wall time of each step on this machine and the test-split metrics (at the operating point
chosen on validation) with bootstrap 95% intervals, overall and per source.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import OUT, SHARED_DATA, group_rows, write_result
from benchmarks.common import ci as _ci
from benchmarks.common import fmt as _fmt
from care_companion.config import Settings
from care_companion.data.chest import import_chest
from care_companion.data.rejects import RejectSources
from care_companion.storage import store_from_settings
from care_companion.tasks import CHEST
from care_companion.training.trainer import TrainConfig
from care_companion.workflows.training import train_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=OUT / "chest-recipe")
    args = parser.parse_args()
    sources = [SHARED_DATA / "cxr-real", SHARED_DATA / "kermany-train"]
    if not all(s.is_dir() for s in sources):
        print(f"skipped: real data not found under {SHARED_DATA}")
        return
    settings = Settings(data_dir=args.data_dir)
    started = time.perf_counter()
    # Other body parts' radiographs (FracAtlas: hand, leg, hip, shoulder) teach the "not a chest X-ray" class
    # what a non-chest radiograph looks like, so the service answers 422 for them instead of a finding.
    non_chest = [p for p in [SHARED_DATA / "fracatlas" / "images"] if p.is_dir()]
    imported = import_chest(
        sources, store_from_settings(settings), seed=settings.seed, rejects=RejectSources(folders=tuple(non_chest))
    )
    import_s = time.perf_counter() - started
    config = TrainConfig(**CHEST.recipe.model_dump(), seed=settings.seed)
    started = time.perf_counter()
    outcome = train_task(CHEST, config, settings=settings, dataset_version=imported.version)
    total_s = time.perf_counter() - started
    report = json.loads((outcome.bundle_dir / "evaluation.json").read_text())

    rows = [
        f"| abnormal vs normal | {_fmt(report['sensitivity_abnormal'])}{_ci(report, 'sensitivity_abnormal')} | "
        f"{_fmt(report['specificity_abnormal'])}{_ci(report, 'specificity_abnormal')} | "
        f"{_fmt(report['auc_abnormal'])}{_ci(report, 'auc_abnormal')} |"
    ]
    for cls, m in report["per_class"].items():
        rows.append(
            f"| {cls} (n={m['n']}) | {_fmt(m['sensitivity'])}{_ci(report, f'{cls}_sensitivity')} | "
            f"{_fmt(m['specificity'])}{_ci(report, f'{cls}_specificity')} | "
            f"{_fmt(m['auc'])}{_ci(report, f'{cls}_auc')} |"
        )
    per_source = group_rows(report, ("source", "origin"))
    gate = "passed, registered" if outcome.registered_version else "refused: " + "; ".join(outcome.gate.shortfalls)
    md = (
        "## Default chest recipe on real data (cxr-real + kermany-train)\n\n"
        "Not-a-chest-X-ray class: 400 generated non-radiographs"
        f"{' + up to 300 FracAtlas radiographs of other body parts' if non_chest else ''}.\n"
        f"Recipe: {CHEST.recipe.model_dump()}.\n"
        f"Data set {imported.version}: {imported.n_images} images. Import {import_s:.0f} s; cache + training + "
        f"calibration + export + test evaluation {total_s:.0f} s (training loop {outcome.train_seconds:.0f} s, "
        f"{outcome.images_per_second:.1f} images/s). Gate: {gate}.\n\n"
        "Test split (never used for tuning), at the operating point chosen on validation for sensitivity 0.95; "
        "95% bootstrap intervals:\n\n"
        "| class | sensitivity | specificity | AUC |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Non-X-ray inputs rejected (unknown recall): {_fmt(report['reject_recall'])}; real X-rays wrongly "
        f"rejected: {_fmt(report['reject_rate_xray'])}. ECE {_fmt(report['ece'])}.\n\n"
        "Per source and per origin (from file names):\n\n"
        "| group | n | abnormal AUC | sensitivity | specificity |\n|---|---|---|---|---|\n" + "\n".join(per_source)
    )
    write_result(
        "chest_recipe",
        {
            "import_seconds": import_s,
            "pipeline_seconds": total_s,
            "train_seconds": outcome.train_seconds,
            "images_per_second": outcome.images_per_second,
            "gate": outcome.gate.model_dump(),
            "report": report,
            "bundle": str(outcome.bundle_dir),
        },
        command="python -m benchmarks.chest_recipe",
        markdown=md,
    )
    print(md)


if __name__ == "__main__":
    main()
