"""INT8 vs float32 for the default chest model: speed of the raw engine and test metrics at the operating point.

Quantises the bundle left by ``benchmarks.chest_recipe`` (activation scales calibrated on its validation
split), scores both models on the test split, and times both engines on the same preprocessed test inputs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import OUT, write_result
from care_companion.config import Settings
from care_companion.data.cache import build_cache
from care_companion.data.manifest import load_manifest
from care_companion.models.bundle import load_meta
from care_companion.models.predictor import BundlePredictor
from care_companion.storage import store_from_settings
from care_companion.tasks import CHEST
from care_companion.workflows.quantization import add_int8
from care_companion.workflows.training import split_arrays


def _throughput(predictor: BundlePredictor, inputs: np.ndarray, batch: int, seconds: float) -> float:
    """Images per second of ``predictor.logits`` on ``inputs`` in batches of ``batch``."""
    predictor.logits(inputs[:batch])  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = (done * batch) % max(1, len(inputs) - batch)
        predictor.logits(inputs[start : start + batch])
        done += 1
    return done * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=OUT / "chest_recipe.json", help="chest_recipe result JSON")
    parser.add_argument("--seconds", type=float, default=8.0, help="timing per engine and batch size")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timing repeats (median)")
    args = parser.parse_args()
    if not args.recipe.is_file():
        print(f"skipped: {args.recipe} not found (run python -m benchmarks.chest_recipe first)")
        return
    recipe = json.loads(args.recipe.read_text())
    bundle = Path(recipe["bundle"])
    settings = Settings(data_dir=bundle.parents[1])
    meta = load_meta(bundle)
    store = store_from_settings(settings)
    manifest = load_manifest(store, "chest", meta.dataset_version)
    images = build_cache(store, manifest, meta.input_size, settings.cache_dir)
    splits = split_arrays(manifest, images, CHEST)
    started = time.perf_counter()
    report = add_int8(bundle, splits["val"], splits["test"], CHEST)
    quantise_s = time.perf_counter() - started

    engines = {p: BundlePredictor(bundle, precision=p) for p in ("fp32", "int8")}
    inputs = engines["fp32"].preprocess(list(splits["test"].images[:256]))
    speed: dict[str, dict[int, list[float]]] = {p: {1: [], 16: []} for p in engines}
    for _ in range(args.repeats):
        for batch in (1, 16):
            for name, engine in engines.items():
                speed[name][batch].append(_throughput(engine, inputs, batch, args.seconds))
    median = {p: {b: float(np.median(v)) for b, v in per.items()} for p, per in speed.items()}
    fp32, int8 = report.test["fp32"], report.test["int8"]
    keys = [
        "auc_abnormal",
        "sensitivity_abnormal",
        "specificity_abnormal",
        "pneumonia_sensitivity",
        "tuberculosis_sensitivity",
    ]
    rows = "\n".join(
        f"| {k} | {fp32.get(k, float('nan')):.3f} | {int8.get(k, float('nan')):.3f} | "
        f"{int8.get(k, float('nan')) - fp32.get(k, float('nan')):+.3f} |"
        for k in keys
    )
    size_fp32 = (bundle / "model.onnx").stat().st_size / 1e6
    size_int8 = (bundle / report.file).stat().st_size / 1e6
    md = (
        "## INT8 static quantisation (default chest model)\n\n"
        f"Calibrated on {report.calibration_images} validation images (QDQ, per-channel INT8 weights, UINT8 "
        f"activations, MinMax) in {quantise_s:.0f} s including both evaluations. Model file {size_fp32:.1f} MB -> "
        f"{size_int8:.1f} MB.\n\n"
        "Raw ONNX Runtime engine on the same preprocessed test inputs (images/s, median of "
        f"{args.repeats} interleaved runs of {args.seconds:.0f} s):\n\n"
        "| batch | float32 | INT8 | speed-up |\n|---|---|---|---|\n"
        + "\n".join(
            f"| {b} | {median['fp32'][b]:.1f} | {median['int8'][b]:.1f} | "
            f"{median['int8'][b] / median['fp32'][b]:.2f}x |"
            for b in (1, 16)
        )
        + "\n\nTest split, each model at its own operating point (temperature and thresholds chosen on validation for "
        "sensitivity 0.95):\n\n| metric | float32 | INT8 | change |\n|---|---|---|---|\n"
        + rows
        + f"\n\nVerdict: INT8 is {'the served default' if report.preferred else 'kept as an option, not the default'}"
        f" ({report.reason}).\n"
    )
    write_result(
        "int8",
        {"report": report.model_dump(), "images_per_second": median, "quantise_seconds": quantise_s},
        command="python -m benchmarks.int8",
        markdown=md,
    )
    print(md)


if __name__ == "__main__":
    main()
