"""Distributed training throughput: Ray Train with 1 and 2 workers vs the single-process trainer, same data.

The same two-view wrist model and the same draw of studies (random pixels: throughput does not depend on
content; a quarter of the studies have one view, as in real data), the same global batch and number of steps.
Figures are training images per second (both views of a two-view study count), from the trainer's own
timing of its training steps: Ray's start-up and the per-epoch validation and checkpoints are excluded from
images/s but reported as wall time. Paths are interleaved, so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.common import write_result
from care_companion.data.datasets import ArrayData
from care_companion.tasks import WRIST
from care_companion.training.distributed import train_on_ray
from care_companion.training.trainer import TrainConfig, train_classifier


def studies(n: int, size: int, seed: int = 0) -> ArrayData:
    """``n`` random two-view studies, a quarter with one view only."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (2 * n, size, size), dtype=np.uint8)
    views = np.arange(2 * n).reshape(n, 2)
    one_view = rng.random(n) < 0.25
    views[one_view, rng.integers(0, 2, one_view.sum())] = -1
    return ArrayData(images=images, labels=rng.integers(0, 2, n), views=views, view_names=tuple(WRIST.views))


def run(path: str, config: TrainConfig, train: ArrayData, val: ArrayData) -> dict[str, float]:
    """One training run along ``path`` ("local", "ray-1", "ray-2"): images/s and wall seconds."""
    started = time.perf_counter()
    if path == "local":
        _, result = train_classifier(train, val, WRIST, config)
    else:
        with tempfile.TemporaryDirectory() as storage:
            workers = int(path.split("-")[1])
            _, result = train_on_ray(train, val, WRIST, config, workers=workers, storage=storage, name="bench")
    views_per_study = float(train.views_used().mean())
    return {
        "studies_per_s": result.images_per_second,
        "images_per_s": result.images_per_second * views_per_study,
        "wall_s": time.perf_counter() - started,
        "studies": result.train_images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default=WRIST.recipe.backbone)
    parser.add_argument("--image-size", type=int, default=WRIST.recipe.image_size)
    parser.add_argument("--batch-size", type=int, default=WRIST.recipe.batch_size)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    n = args.steps * args.batch_size
    train, val = studies(n, args.image_size), studies(args.batch_size, args.image_size, seed=1)
    config = TrainConfig(
        backbone=args.backbone,
        image_size=args.image_size,
        batch_size=args.batch_size,
        head_epochs=0,
        finetune_epochs=1,
        samples_per_epoch=n,
        patience=1,
        seed=0,
    )
    paths = ("local", "ray-1", "ray-2")
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    for _ in range(args.repeats):
        for path in paths:
            runs[path].append(run(path, config, train, val))
    median = {p: {k: float(np.median([r[k] for r in runs[p]])) for k in runs[p][0]} for p in paths}
    base = median["local"]["images_per_s"]
    command = (
        f"python -m benchmarks.ray_throughput --backbone {args.backbone} --image-size {args.image_size} "
        f"--batch-size {args.batch_size} --steps {args.steps} --repeats {args.repeats}"
    )
    names = {
        "local": "single process (`train wrist`, all cores)",
        "ray-1": "Ray Train, 1 worker (`--workers 1`)",
        "ray-2": "Ray Train, 2 workers (`--workers 2`, DDP over gloo)",
    }
    rows = "".join(
        f"| {names[p]} | {median[p]['images_per_s']:.1f} | {median[p]['images_per_s'] / base:.2f}x | "
        f"{median[p]['wall_s']:.0f} |\n"
        for p in paths
    )
    md = (
        "## Distributed training throughput (Ray Train vs the single-process trainer)\n\n"
        f"Two-view wrist model ({args.backbone}, shared backbone), {args.image_size}px, global batch "
        f"{args.batch_size}, {args.steps} steps of the same {n} studies (a quarter with one view), median of "
        f"{args.repeats} interleaved repeats on this {os.cpu_count()}-core machine.\n\n"
        "| path | training images/s | vs single process | wall s (incl. start-up, validation) |\n"
        "|---|---|---|---|\n" + rows + "\n"
        "Workers share the same cores here, so more workers cannot add compute: the figures show the cost of "
        "the distributed path (gradient all-reduce, per-worker threads), not a speed-up. On a cluster each "
        "worker brings its own cores or GPU.\n"
    )
    write_result("ray_throughput", {"median": median, "runs": runs}, command=command, markdown=md)
    print(md)


if __name__ == "__main__":
    main()
