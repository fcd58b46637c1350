"""The two-stage trainer: head only on a frozen backbone, then full fine-tuning, with early stopping.

AdamW with linear warm-up and cosine decay per stage, class-weighted cross-entropy, batched augmentation,
early stopping on validation sensitivity (the mean of per-class recalls), best weights kept in memory.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from care_companion.data.datasets import ArrayData, Augment, batches
from care_companion.models.factory import Classifier, create_classifier
from care_companion.progress import progress_bar
from care_companion.tasks import Recipe, TaskSpec

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any]], None]


class TrainConfig(Recipe):
    """A resolved training configuration: the task recipe plus run options."""

    pretrained: bool = False
    init_weights: Path | None = None
    seed: int = 42
    max_steps_per_epoch: int | None = Field(default=None, description="Cap steps per epoch (tests, smoke runs).")
    mean: float = 0.5
    std: float = 0.25
    class_weighted: bool = True
    augment: bool = True
    balance_sources: bool = Field(
        default=True,
        description="Within each class, draw every source equally often (sampling with replacement), so a large "
        "source cannot teach the model its own look instead of the disease.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="Training arithmetic; auto uses bfloat16 autocast where the CPU has AMX/AVX512-BF16.",
    )


class TrainResult(BaseModel):
    """What a training run produced besides the model itself."""

    model_config = {"arbitrary_types_allowed": True}

    history: list[dict[str, Any]]
    best: dict[str, Any]
    init: str
    seconds: float
    train_images: int
    images_per_second: float


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency ("balanced") weights; classes absent from training get weight 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def sampling_weights(labels: np.ndarray, sources: np.ndarray | None) -> np.ndarray | None:
    """Per-item draw probabilities keeping each class's share but splitting it evenly over its sources.

    Returns ``None`` (uniform sampling) when there is no source information or every class has one source.
    """
    if sources is None:
        return None
    weights = np.zeros(len(labels), dtype=float)
    balanced = False
    for c in np.unique(labels):
        in_class = labels == c
        names, counts = np.unique(sources[in_class], return_counts=True)
        balanced |= len(names) > 1
        share = in_class.sum() / len(labels)
        for name, count in zip(names, counts, strict=True):
            weights[in_class & (sources == name)] = share / (len(names) * count)
    return weights / weights.sum() if balanced else None


def use_bf16(precision: str) -> bool:
    """Whether to train under bfloat16 autocast: asked for, or ``auto`` on a CPU with native bf16 support."""
    if precision != "auto":
        return precision == "bf16"
    if torch.cuda.is_available():
        return False
    try:
        return bool(torch.cpu._is_amx_tile_supported()) or "avx512_bf16" in _cpu_flags()
    except Exception:
        return False


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read(20000)
    except OSError:
        return ""


def _schedule(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, data: ArrayData, *, batch_size: int, mean: float, std: float) -> np.ndarray:
    """Logits for every item of ``data`` in order (eval mode, no augmentation)."""
    model.eval()
    out = [
        model(x.contiguous(memory_format=torch.channels_last)).float().numpy()
        for x, _ in batches(data, batch_size, mean=mean, std=std)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _val_metrics(
    logits: np.ndarray, labels: np.ndarray, weights: torch.Tensor | None, task: TaskSpec
) -> dict[str, float]:
    t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels.astype(np.int64))
    loss = F.cross_entropy(t_logits, t_labels, weight=weights).item()
    pred = logits.argmax(1)
    recalls = [float((pred[labels == c] == c).mean()) for c in range(len(task.classes)) if (labels == c).any()]
    disease = np.isin(labels, task.positive_indices)
    abnormal_recall = float(np.isin(pred[disease], task.positive_indices).mean()) if disease.any() else float("nan")
    return {
        "val_loss": loss,
        "val_accuracy": float((pred == labels).mean()),
        "val_recall": float(np.mean(recalls)),
        "val_recall_abnormal": abnormal_recall,
    }


def train_classifier(
    train: ArrayData,
    val: ArrayData,
    task: TaskSpec,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
) -> tuple[Classifier, TrainResult]:
    """Train a classifier for ``task`` in two stages and return the best model by validation sensitivity.

    Args:
        train: training images and labels.
        val: validation images and labels (early stopping and model selection).
        task: class names and disease classes.
        config: recipe and run options.
        on_epoch: called after every epoch with that epoch's metrics (for MLflow logging).
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model, init = create_classifier(
        config.backbone, len(task.classes), pretrained=config.pretrained, init_weights=config.init_weights
    )
    log.info("backbone %s: %s", config.backbone, init)
    model = model.to(memory_format=torch.channels_last)
    bf16 = use_bf16(config.precision)
    log.info("training arithmetic: %s", "bfloat16 autocast" if bf16 else "float32")
    weights = class_weights(train.labels, len(task.classes)) if config.class_weighted else None
    augment = Augment() if config.augment else None
    stages: list[tuple[str, int, float]] = []
    if config.head_epochs > 0 and not init.startswith("random"):
        stages.append(("head", config.head_epochs, config.head_lr))
    elif config.head_epochs > 0:
        log.info("skipping the head-only stage: a frozen random backbone has nothing to offer")
    stages.append(("finetune", config.finetune_epochs, config.finetune_lr))

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": -1.0, "val_loss": float("inf")}
    best_state = copy.deepcopy(model.state_dict())
    seen, train_seconds, started = 0, 0.0, time.perf_counter()
    per_epoch = config.samples_per_epoch or len(train)
    sources = train.groups.get("source") if train.groups and config.balance_sources else None
    draw = sampling_weights(train.labels, sources)
    if draw is not None:
        log.info("sampling balanced over sources within each class")
    steps = math.ceil(per_epoch / config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)

    with progress_bar() as bar:
        for stage, epochs, lr in stages:
            model.freeze_backbone(stage == "head")
            params = [p for p in model.parameters() if p.requires_grad]
            optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _schedule(epochs * steps, config.warmup_fraction))
            stale = 0
            for epoch in range(1, epochs + 1):
                model.train()
                if stage == "head":
                    model.backbone.eval()
                if draw is None:
                    order = rng.choice(len(train), size=per_epoch, replace=per_epoch > len(train))
                else:
                    order = rng.choice(len(train), size=per_epoch, replace=True, p=draw)
                order = order[: steps * config.batch_size]
                job = bar.add_task(f"{stage} epoch {epoch}/{epochs}", total=steps)
                total_loss, correct, count = 0.0, 0, 0
                hits = np.zeros(len(task.classes))
                seen_per_class = np.zeros(len(task.classes))
                tick = time.perf_counter()
                for x, y in batches(
                    train,
                    config.batch_size,
                    mean=config.mean,
                    std=config.std,
                    order=order,
                    augment=augment,
                    generator=generator,
                ):
                    optimiser.zero_grad(set_to_none=True)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        logits = model(x.contiguous(memory_format=torch.channels_last))
                    loss = F.cross_entropy(logits.float(), y, weight=weights)
                    loss.backward()
                    optimiser.step()
                    scheduler.step()
                    total_loss += loss.item() * len(y)
                    pred = logits.argmax(1)
                    correct += int((pred == y).sum())
                    count += len(y)
                    np.add.at(seen_per_class, y.numpy(), 1)
                    np.add.at(hits, y[pred == y].numpy(), 1)
                    bar.advance(job)
                train_seconds += time.perf_counter() - tick
                seen += count
                bar.remove_task(job)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    val_logits = predict_logits(model, val, batch_size=64, mean=config.mean, std=config.std)
                metrics = {
                    "stage": stage,
                    "epoch": epoch,
                    "step": len(history) + 1,
                    "lr": optimiser.param_groups[0]["lr"],
                    "train_loss": total_loss / max(1, count),
                    "train_accuracy": correct / max(1, count),
                    "train_recall": float(np.mean(hits[seen_per_class > 0] / seen_per_class[seen_per_class > 0])),
                    **_val_metrics(val_logits, val.labels, weights, task),
                }
                history.append(metrics)
                log.info(
                    "%s epoch %d: train loss %.4f, val loss %.4f, val recall %.3f",
                    stage,
                    epoch,
                    metrics["train_loss"],
                    metrics["val_loss"],
                    metrics["val_recall"],
                )
                if on_epoch:
                    on_epoch(metrics)
                better = metrics["val_recall"] > best["score"] + 1e-9 or (
                    abs(metrics["val_recall"] - best["score"]) <= 1e-9 and metrics["val_loss"] < best["val_loss"]
                )
                if better:
                    best = {
                        "score": metrics["val_recall"],
                        "val_loss": metrics["val_loss"],
                        "stage": stage,
                        "epoch": epoch,
                    }
                    best_state = copy.deepcopy(model.state_dict())
                    stale = 0
                else:
                    stale += 1
                    if stale >= config.patience:
                        log.info("early stop in %s after epoch %d (no better val recall for %d)", stage, epoch, stale)
                        break
    model.load_state_dict(best_state)
    model.eval()
    result = TrainResult(
        history=history,
        best=best,
        init=init,
        seconds=time.perf_counter() - started,
        train_images=seen,
        images_per_second=seen / max(train_seconds, 1e-9),
    )
    return model, result
