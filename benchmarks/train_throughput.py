"""Training throughput: our trainer vs a bare PyTorch loop on the same model, batch and input size.

The bare loop is the limit: pre-made tensors, no augmentation, no validation, no bookkeeping, the same
arithmetic (bfloat16 autocast and channels-last where the trainer uses them). Our
trainer's figure includes batch assembly from the uint8 cache and augmentation; validation passes are
excluded from both (the trainer times its training steps only).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import write_result
from care_companion.data.datasets import ArrayData
from care_companion.models.factory import create_classifier
from care_companion.tasks import CHEST
from care_companion.training.trainer import TrainConfig, train_classifier, use_bf16


def bare_loop(backbone: str, size: int, batch: int, steps: int) -> float:
    """Images per second of the plainest possible training loop."""
    torch.manual_seed(0)
    model, _ = create_classifier(backbone, len(CHEST.classes))
    model = model.to(memory_format=torch.channels_last).train()
    bf16 = use_bf16("auto")  # the same arithmetic the trainer picks on this machine
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, len(CHEST.classes), (batch,))
    start = time.perf_counter()  # no separate warm-up: the trainer's figure includes its first steps too
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def ours(backbone: str, size: int, batch: int, steps: int) -> float:
    """Images per second of ``train_classifier`` over the same number of steps (training steps only)."""
    rng = np.random.default_rng(0)
    n = steps * batch
    train = ArrayData(images=rng.integers(0, 255, (n, size, size), dtype=np.uint8), labels=rng.integers(0, 4, n))
    val = ArrayData(images=train.images[:batch], labels=train.labels[:batch])
    config = TrainConfig(
        backbone=backbone,
        image_size=size,
        batch_size=batch,
        head_epochs=0,
        finetune_epochs=1,
        samples_per_epoch=n,
        patience=1,
        seed=0,
    )
    _, result = train_classifier(train, val, CHEST, config)
    return result.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    recipe = CHEST.recipe
    parser.add_argument("--backbone", default=recipe.backbone)
    parser.add_argument("--image-size", type=int, default=recipe.image_size)
    parser.add_argument("--batch-size", type=int, default=recipe.batch_size)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        rows.append(
            (
                bare_loop(args.backbone, args.image_size, args.batch_size, args.steps),
                ours(args.backbone, args.image_size, args.batch_size, args.steps),
            )
        )
    bare = float(np.median([r[0] for r in rows]))
    mine = float(np.median([r[1] for r in rows]))
    ratio = mine / bare
    command = (
        f"python -m benchmarks.train_throughput --backbone {args.backbone} --image-size {args.image_size} "
        f"--batch-size {args.batch_size} --steps {args.steps}"
    )
    md = (
        "## Training throughput (our trainer vs a bare PyTorch loop)\n\n"
        f"Model {args.backbone}, {args.image_size}px, batch {args.batch_size}, {args.steps} steps, median of "
        f"{args.repeats} interleaved repeats.\n\n"
        "| path | images/s |\n|---|---|\n"
        f"| bare PyTorch loop (pre-made tensors, no augmentation) | {bare:.1f} |\n"
        f"| our trainer (uint8 cache → augmentation → step) | {mine:.1f} |\n"
        f"| **ratio** | **{ratio:.2f}x** (target ≥ 0.9x) |\n"
    )
    write_result(
        "train_throughput",
        {"bare_images_per_s": bare, "ours_images_per_s": mine, "ratio": ratio, "runs": rows},
        command=command,
        markdown=md,
    )
    print(md)


if __name__ == "__main__":
    main()
