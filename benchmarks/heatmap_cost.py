"""What heat maps cost the engine: throughput of the outputs the service read before maps (logits, embedding, view
features) against those it reads now (the same plus the class maps, combined into each view's map in numpy).

Each task's default backbone at its recipe's input size, random weights (the cost does not depend on them),
exported as the service exports it; the two ways are timed in alternating rounds in one process, at the
service's largest micro-batch. Rendering a PNG happens only when a map is fetched, so it is not counted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import write_result
from care_companion.config import Settings
from care_companion.models.bundle import ONNX_FILE, BundleMeta, save_meta
from care_companion.models.export import export_onnx
from care_companion.models.factory import create_model
from care_companion.models.heatmap import view_maps
from care_companion.models.predictor import BundlePredictor, Feed, softmax
from care_companion.tasks import CHEST, WRIST, TaskSpec

TARGET = 0.90  # maps may cost at most 10% of throughput


def bundle_for(task: TaskSpec, directory: Path) -> Path:
    """A random-weight bundle of the task's recipe backbone and input size."""
    torch.manual_seed(0)
    model, _ = create_model(task, task.recipe.backbone)
    save_meta(directory, BundleMeta.for_task(task, backbone=task.recipe.backbone, input_size=task.recipe.image_size))
    export_onnx(model.eval(), directory / ONNX_FILE, input_size=task.recipe.image_size)
    return directory


def feed_for(predictor: BundlePredictor, task: TaskSpec, batch: int) -> Feed:
    """A batch of random films (every view given)."""
    rng = np.random.default_rng(0)
    studies = [{view: rng.integers(0, 256, (300, 260), dtype=np.uint8) for view in task.views} for _ in range(batch)]
    return predictor.preprocess_studies(studies)


def with_maps(predictor: BundlePredictor, task: TaskSpec, feed: Feed) -> None:
    """What the service computes now for a batch: the engine's outputs and every item's map per view."""
    logits, _, _, maps = predictor.served_outputs(feed)
    probabilities = softmax(logits, predictor.temperature)
    for p, m in zip(probabilities, maps, strict=True):
        view_maps(task, m, p, int(p.argmax()))


def measure(task: TaskSpec, batch: int, rounds: int, threads: int | None) -> dict[str, Any]:
    """Items per second without and with maps, alternating rounds (the median round of each)."""
    with tempfile.TemporaryDirectory() as tmp:
        predictor = BundlePredictor(bundle_for(task, Path(tmp) / task.name), threads=threads)
        feed = feed_for(predictor, task, batch)
        ways = {
            "without maps": lambda: predictor.engine_outputs(feed),
            "with maps": lambda: with_maps(predictor, task, feed),
        }
        for run in ways.values():  # warm-up
            run()
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, run in ways.items():
                started = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - started)
    rates = {name: batch / float(np.median(s)) for name, s in seconds.items()}
    return {"rates": rates, "ratio": rates["with maps"] / rates["without maps"], "batch": batch, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    settings = Settings()
    batch = settings.max_batch_size
    results = {task.name: measure(task, batch, args.rounds, settings.inference_threads) for task in (CHEST, WRIST)}
    rows = [
        f"| {name} ({task.recipe.backbone}, {task.recipe.image_size} px, {len(task.views)} view(s)) | "
        f"{r['rates']['without maps']:.1f} | {r['rates']['with maps']:.1f} | {r['ratio']:.3f} | "
        f"{'PASS' if r['ratio'] >= TARGET else 'FAIL'} |"
        for (name, r), task in zip(results.items(), (CHEST, WRIST), strict=True)
    ]
    md = (
        "## Heat-map cost: engine throughput with and without class maps\n\n"
        f"Random-weight models of each task's recipe, exported as served; batches of {batch} (the service's "
        f"`CARE_MAX_BATCH_SIZE`), {args.rounds} alternating rounds in one process, median round. 'With maps' adds "
        "the `class_maps` output and combines each item's map per view in numpy; PNGs are drawn only when fetched. "
        f"Target: with maps at least {TARGET:.0%} of the throughput without.\n\n"
        "| model | items/s without maps | items/s with maps | ratio | target |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
    )
    write_result("heatmap_cost", {"results": results}, command="python -m benchmarks.heatmap_cost", markdown=md)
    print(md)


if __name__ == "__main__":
    main()
