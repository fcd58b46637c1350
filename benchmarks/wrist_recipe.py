"""The default wrist recipe on real fracture films: import FracAtlas (all regions) and train from scratch, or
(``--init-weights``) starting from a chest X-ray model's backbone.

FracAtlas has single films (no studies), so every study is one-view; GRAZPEDWRI-DX's images are not on this
machine. Reports test-split sensitivity at the operating point (chosen on validation for 0.95), specificity
and AUC for the fracture class with 95% bootstrap intervals, per region and per view, and the wall time of
each step. Anchor: commercial fracture AI reports sensitivity about 0.89 at specificity about 0.89.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import OUT, SHARED_DATA, ci, fmt, group_rows, write_result
from care_companion.config import Settings
from care_companion.data.wrist import import_fracatlas
from care_companion.storage import store_from_settings
from care_companion.tasks import WRIST
from care_companion.training.trainer import TrainConfig
from care_companion.workflows.training import resolve_init_weights, train_task


def outcome_best(bundle_dir: Path) -> dict[str, object]:
    """The run's best validation epoch, as its bundle records it."""
    return dict(json.loads((bundle_dir / "bundle.json").read_text())["training"]["best"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=OUT / "wrist-recipe")
    parser.add_argument("--workers", type=int, default=0, help="Ray Train workers (0: in this process).")
    parser.add_argument(
        "--init-weights",
        default=None,
        help="Start from this model's backbone (a chest bundle, its model.pt, or models:/chest@ALIAS); the result "
        "gets a section of its own next to the from-scratch one.",
    )
    args = parser.parse_args()
    source = SHARED_DATA / "fracatlas"
    if not source.is_dir():
        print(f"skipped: FracAtlas not found under {SHARED_DATA}")
        return
    settings = Settings(data_dir=args.data_dir)
    started = time.perf_counter()
    imported = import_fracatlas(source, store_from_settings(settings), seed=settings.seed)
    import_s = time.perf_counter() - started
    init = resolve_init_weights(args.init_weights, settings) if args.init_weights else None
    config = TrainConfig(**WRIST.recipe.model_dump(), seed=settings.seed, init_weights=init)
    started = time.perf_counter()
    outcome = train_task(WRIST, config, settings=settings, dataset_version=imported.version, workers=args.workers)
    total_s = time.perf_counter() - started
    report = json.loads((outcome.bundle_dir / "evaluation.json").read_text())
    gate = "passed, registered" if outcome.registered_version else "refused: " + "; ".join(outcome.gate.shortfalls)
    n_fracture = report["n_per_class"]["fracture"]
    best = outcome_best(outcome.bundle_dir)
    start = f"initialised from the chest model {args.init_weights}" if init else "from scratch"
    md = (
        f"## Default wrist recipe on real fracture films (FracAtlas, all regions, {start})\n\n"
        f"Recipe: {WRIST.recipe.model_dump()}; {args.workers or 'no'} Ray workers; initial weights: "
        f"{init or 'random'}.\n"
        f"Validation (what a choice between recipes may use): best fracture recall {best['score']:.3f}, "
        f"loss {best['val_loss']:.3f} (epoch {best['epoch']} of stage {best['stage']}).\n"
        f"Data set {imported.version}: {imported.n_images} films, all one-view studies (FracAtlas has no "
        f"studies; GRAZPEDWRI-DX images are not on this machine). Import {import_s:.0f} s; cache + training + "
        f"calibration + export + INT8 + test evaluation {total_s:.0f} s (training loop "
        f"{outcome.train_seconds:.0f} s, {outcome.images_per_second:.1f} studies/s). Gate: {gate}.\n\n"
        f"Test split ({report['n']} films, {n_fracture} fractured; never used for tuning), fracture class at the "
        "operating point chosen on validation for sensitivity 0.95, 95% bootstrap intervals:\n\n"
        "| sensitivity | specificity | AUC | ECE |\n|---|---|---|---|\n"
        f"| {fmt(report['sensitivity'])}{ci(report, 'sensitivity_abnormal')} | "
        f"{fmt(report['specificity'])}{ci(report, 'specificity_abnormal')} | "
        f"{fmt(report['auc'])}{ci(report, 'auc_abnormal')} | {fmt(report['ece'])} |\n\n"
        "Anchor: commercial fracture AI reports sensitivity about 0.89 at specificity about 0.89 (on its own, "
        "larger test sets; not comparable one to one).\n\n"
        "Per region (origin) and per view:\n\n"
        "| group | n | AUC | sensitivity | specificity |\n|---|---|---|---|---|\n"
        + "\n".join(group_rows(report, ("origin", "views")))
    )
    write_result(
        "wrist_recipe_init" if init else "wrist_recipe",
        {
            "import_seconds": import_s,
            "pipeline_seconds": total_s,
            "train_seconds": outcome.train_seconds,
            "studies_per_second": outcome.images_per_second,
            "gate": outcome.gate.model_dump(),
            "report": report,
            "bundle": str(outcome.bundle_dir),
            "init_weights": str(init) if init else None,
            "validation_best": best,
        },
        command=f"python -m benchmarks.wrist_recipe --workers {args.workers}"
        + (f" --init-weights {args.init_weights}" if init else ""),
        markdown=md,
    )
    print(md)


if __name__ == "__main__":
    main()
