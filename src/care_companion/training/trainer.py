"""The two-stage trainer: head only on a frozen backbone, then full fine-tuning, with early stopping.

AdamW with linear warm-up and cosine decay per stage, class-weighted cross-entropy, batched augmentation,
early stopping on validation sensitivity (the mean of per-class recalls), best weights kept in memory.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from rich.progress import Progress, TaskID
from torch import nn

from care_companion.data.datasets import ArrayData, Augment, batches
from care_companion.models.base import BackboneClassifier
from care_companion.models.factory import create_model
from care_companion.progress import progress_bar
from care_companion.tasks import Recipe, TaskSpec
from care_companion.training.world import LocalWorld, TrainState, World

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


def _channels_last(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in inputs)


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, data: ArrayData, *, batch_size: int, mean: float, std: float) -> np.ndarray:
    """Logits for every item of ``data`` in order (eval mode, no augmentation)."""
    model.eval()
    out = [model(*_channels_last(x)).float().numpy() for x, _ in batches(data, batch_size, mean=mean, std=std)]
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


def _stages(config: TrainConfig, init: str) -> list[tuple[str, int, float]]:
    stages: list[tuple[str, int, float]] = []
    if config.head_epochs > 0 and not init.startswith("random"):
        stages.append(("head", config.head_epochs, config.head_lr))
    elif config.head_epochs > 0:
        log.info("skipping the head-only stage: a frozen random backbone has nothing to offer")
    stages.append(("finetune", config.finetune_epochs, config.finetune_lr))
    return stages


def _epoch_order(
    n: int, per_epoch: int, steps: int, batch_size: int, draw: np.ndarray | None, seed: tuple[int, ...]
) -> np.ndarray:
    """The epoch's draw of training items; derived from (seed, stage, epoch) so a resumed run draws the same."""
    rng = np.random.default_rng(seed)
    if draw is None:
        order = rng.choice(n, size=per_epoch, replace=per_epoch > n)
    else:
        order = rng.choice(n, size=per_epoch, replace=True, p=draw)
    return order[: steps * batch_size]


def _is_better(metrics: dict[str, Any], best: dict[str, Any]) -> bool:
    return bool(
        metrics["val_recall"] > best["score"] + 1e-9
        or (abs(metrics["val_recall"] - best["score"]) <= 1e-9 and metrics["val_loss"] < best["val_loss"])
    )


PROGRESS_LOG_SECONDS = 30.0  # without a terminal (Ray workers, CI logs), progress is logged this often


class _Ticker:
    """Advances a progress bar by one step; without a terminal it also logs progress and ETA now and then."""

    def __init__(self, bar: Progress, job: TaskID, *, log_every: float | None) -> None:
        self.bar, self.job, self.log_every = bar, job, log_every
        self.started = self.last = time.perf_counter()

    def __call__(self) -> None:
        self.bar.advance(self.job)
        now = time.perf_counter()
        if self.log_every is None or now - self.last < self.log_every or self.bar.disable:
            return
        self.last = now
        task = next(t for t in self.bar.tasks if t.id == self.job)  # ids outlive removed earlier tasks
        done, total = task.completed, task.total or task.completed
        eta = (now - self.started) / max(done, 1) * (total - done)
        log.info("%s: step %d/%d, ETA %.0f s", task.description, done, total, eta)


@dataclass
class _EpochTally:
    """Training loss, accuracy and per-class hits of one epoch, summed over batches (and processes)."""

    totals: np.ndarray  # loss sum, correct, count
    hits: np.ndarray
    per_class: np.ndarray
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        loss, correct, count = self.totals
        seen = self.per_class > 0
        return {
            "train_loss": loss / max(1.0, count),
            "train_accuracy": correct / max(1.0, count),
            "train_recall": float(np.mean(self.hits[seen] / self.per_class[seen])),
        }


def _train_epoch(
    net: nn.Module,
    batches_: Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]],
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    weights: torch.Tensor | None,
    num_classes: int,
    *,
    bf16: bool,
    advance: Callable[[], None],
) -> _EpochTally:
    tally = _EpochTally(np.zeros(3), np.zeros(num_classes), np.zeros(num_classes))
    tick = time.perf_counter()
    for inputs, y in batches_:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(*_channels_last(inputs))
        loss = F.cross_entropy(logits.float(), y, weight=weights)
        loss.backward()
        optimiser.step()
        scheduler.step()
        pred = logits.argmax(1)
        tally.totals += (loss.item() * len(y), int((pred == y).sum()), len(y))
        np.add.at(tally.per_class, y.numpy(), 1)
        np.add.at(tally.hits, y[pred == y].numpy(), 1)
        advance()
    tally.seconds = time.perf_counter() - tick
    return tally


@dataclass
class _Run:
    """What the stages of one training run share: data, options, the model and the resumable state."""

    train: ArrayData
    val: ArrayData
    task: TaskSpec
    config: TrainConfig
    world: World
    on_epoch: EpochCallback | None
    model: BackboneClassifier
    init: str
    bf16: bool
    weights: torch.Tensor | None
    augment: Augment | None
    state: TrainState
    best_weights: dict[str, Any]
    started: float
    per_epoch: int
    draw: np.ndarray | None
    steps: int
    local_batch: int


def _build_model(task: TaskSpec, config: TrainConfig) -> tuple[BackboneClassifier, str, bool]:
    """The seeded model in channels-last layout, how it was initialised, and whether to train in bfloat16."""
    torch.manual_seed(config.seed)
    model, init = create_model(
        task,
        config.backbone,
        pretrained=config.pretrained,
        init_weights=config.init_weights,
        output_stride=config.output_stride,
    )
    log.info("backbone %s: %s", config.backbone, init)
    model = model.to(memory_format=torch.channels_last)
    bf16 = use_bf16(config.precision)
    log.info("training arithmetic: %s", "bfloat16 autocast" if bf16 else "float32")
    return model, init, bf16


def _start_run(
    train: ArrayData,
    val: ArrayData,
    task: TaskSpec,
    config: TrainConfig,
    world: World,
    on_epoch: EpochCallback | None,
) -> _Run:
    """Build the model, restore the world's checkpoint if any, and size each epoch's draw of training items."""
    model, init, bf16 = _build_model(task, config)
    weights = class_weights(train.labels, len(task.classes)) if config.class_weighted else None
    augment = Augment() if config.augment else None
    state = world.restored() or TrainState()
    if state.weights is not None:
        model.load_state_dict(state.weights)
        log.info("resuming at stage %d, epoch %d", state.stage_index + 1, state.epoch + 1)
    best_weights = state.best_weights or copy.deepcopy(model.state_dict())
    started = time.perf_counter() - state.train_seconds
    per_epoch = config.samples_per_epoch or len(train)
    sources = train.groups.get("source") if train.groups and config.balance_sources else None
    draw = sampling_weights(train.labels, sources)
    if draw is not None:
        log.info("sampling balanced over sources within each class")
    steps = math.ceil(per_epoch / config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    return _Run(
        train=train,
        val=val,
        task=task,
        config=config,
        world=world,
        on_epoch=on_epoch,
        model=model,
        init=init,
        bf16=bf16,
        weights=weights,
        augment=augment,
        state=state,
        best_weights=best_weights,
        started=started,
        per_epoch=per_epoch,
        draw=draw,
        steps=steps,
        local_batch=max(1, config.batch_size // world.size),  # the global batch is the recipe's
    )


def _optimiser(
    run: _Run, stage: str, epochs: int, lr: float
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The stage's trained network (wrapped by the world), AdamW and its warm-up/cosine schedule, restored from
    the checkpoint when resuming mid-stage."""
    run.model.freeze_backbone(stage == "head")
    net = run.world.wrap(run.model)  # after freezing: DDP fixes the trained parameters when it wraps
    params = [p for p in run.model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=run.config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _schedule(epochs * run.steps, run.config.warmup_fraction))
    if run.state.optimiser is not None and run.state.scheduler is not None:
        optimiser.load_state_dict(run.state.optimiser)
        scheduler.load_state_dict(run.state.scheduler)
    return net, optimiser, scheduler


def _fit_epoch(
    run: _Run,
    bar: Progress,
    net: nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    stage_index: int,
    stage: str,
    epoch: int,
    epochs: int,
) -> _EpochTally:
    """One epoch of this process's shard of the seeded draw; the tally summed over all processes."""
    config, world = run.config, run.world
    run.model.train()
    run.model.freeze_backbone(stage == "head")  # a frozen backbone stays in eval mode
    draw_seed = (config.seed, stage_index, epoch)
    order = _epoch_order(len(run.train), run.per_epoch, run.steps, config.batch_size, run.draw, draw_seed)
    order = order[world.rank :: world.size]
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([*draw_seed, world.rank]).generate_state(1)[0])
    )
    job = bar.add_task(f"{stage} epoch {epoch}/{epochs}", total=math.ceil(len(order) / run.local_batch))
    tally = _train_epoch(
        net,
        batches(
            run.train,
            run.local_batch,
            mean=config.mean,
            std=config.std,
            order=order,
            augment=run.augment,
            generator=generator,
        ),
        optimiser,
        scheduler,
        run.weights,
        len(run.task.classes),
        bf16=run.bf16,
        advance=_Ticker(bar, job, log_every=None if bar.console.is_terminal else PROGRESS_LOG_SECONDS),
    )
    bar.remove_task(job)
    return _EpochTally(world.sum(tally.totals), world.sum(tally.hits), world.sum(tally.per_class), tally.seconds)


def _epoch_metrics(
    run: _Run, tally: _EpochTally, optimiser: torch.optim.Optimizer, *, stage: str, epoch: int
) -> dict[str, Any]:
    """The epoch's training and validation metrics, computed on rank 0 and shared with every rank."""
    metrics: dict[str, Any] | None = None
    if run.world.is_chief:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.bf16):
            val_logits = predict_logits(run.model, run.val, batch_size=64, mean=run.config.mean, std=run.config.std)
        metrics = {
            "stage": stage,
            "epoch": epoch,
            "step": len(run.state.history) + 1,
            "lr": optimiser.param_groups[0]["lr"],
            **tally.metrics(),
            **_val_metrics(val_logits, run.val.labels, run.weights, run.task),
        }
    metrics = run.world.broadcast(metrics)  # every rank takes the same early-stopping decision
    assert metrics is not None
    return metrics


def _record_epoch(run: _Run, metrics: dict[str, Any], *, epoch: int, epochs: int) -> None:
    """Log the epoch, keep the best weights so far, count epochs without progress and mark the stage done."""
    state = run.state
    state.history.append(metrics)
    log.info(
        "%s epoch %d/%d: train loss %.4f, val loss %.4f, val recall %.3f",
        metrics["stage"],
        epoch,
        epochs,
        metrics["train_loss"],
        metrics["val_loss"],
        metrics["val_recall"],
    )
    if run.on_epoch and run.world.is_chief:
        run.on_epoch(metrics)
    if _is_better(metrics, state.best):
        keys = ("val_recall", "val_loss", "stage", "epoch")
        state.best = dict(zip(("score", *keys[1:]), (metrics[k] for k in keys), strict=True))
        run.best_weights = copy.deepcopy(run.model.state_dict())
        state.stale = 0
    else:
        state.stale += 1
    state.epoch = epoch
    state.stage_done = epoch == epochs or state.stale >= run.config.patience


def _checkpoint(run: _Run, optimiser: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Save the resumable state (rank 0 writes; every rank takes part)."""
    snapshot = {
        "weights": run.model.state_dict(),
        "best_weights": run.best_weights,
        "optimiser": optimiser.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    run.world.save(run.state.model_copy(update=snapshot) if run.world.is_chief else None)


def _run_stage(run: _Run, bar: Progress, stage_index: int, stage: str, epochs: int, lr: float) -> None:
    """Train one stage (head or finetune) from where the state left it, until its epochs or patience run out."""
    state = run.state
    if stage_index < state.stage_index or (stage_index == state.stage_index and state.stage_done):
        return
    if stage_index > state.stage_index:
        run.state = state = state.model_copy(update={"stage_index": stage_index, "epoch": 0, "stale": 0})
        state.optimiser = state.scheduler = None
    net, optimiser, scheduler = _optimiser(run, stage, epochs, lr)
    for epoch in range(state.epoch + 1, epochs + 1):
        tally = _fit_epoch(
            run, bar, net, optimiser, scheduler, stage_index=stage_index, stage=stage, epoch=epoch, epochs=epochs
        )
        state.train_seconds += tally.seconds
        state.seen += int(tally.totals[2])
        metrics = _epoch_metrics(run, tally, optimiser, stage=stage, epoch=epoch)
        _record_epoch(run, metrics, epoch=epoch, epochs=epochs)
        _checkpoint(run, optimiser, scheduler)
        if state.stale >= run.config.patience:
            log.info("early stop in %s after epoch %d (no better val recall for %d)", stage, epoch, state.stale)
            break
    state.optimiser = state.scheduler = None


def _best_model(run: _Run) -> BackboneClassifier:
    """The model with the best weights seen, in eval mode."""
    run.model.load_state_dict(run.best_weights)
    run.model.eval()
    return run.model


def _result(run: _Run) -> TrainResult:
    """History, best epoch, timing and throughput of the run."""
    state = run.state
    return TrainResult(
        history=state.history,
        best=state.best,
        init=run.init,
        seconds=time.perf_counter() - run.started,
        train_images=state.seen,
        images_per_second=state.seen / max(state.train_seconds, 1e-9),
    )


def train_classifier(
    train: ArrayData,
    val: ArrayData,
    task: TaskSpec,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
    world: World | None = None,
) -> tuple[BackboneClassifier, TrainResult]:
    """Train a model for ``task`` in two stages and return the best one by validation sensitivity.

    Args:
        train: training items (images, or studies of several views) and labels.
        val: validation items (early stopping and model selection).
        task: class names, disease classes and views.
        config: recipe and run options.
        on_epoch: called after every epoch with that epoch's metrics (for MLflow logging), on rank 0 only.
        world: the processes training together (default: this process alone); it shards each epoch's draw,
            averages gradients, and saves and restores :class:`TrainState` checkpoints.
    """
    world = world or LocalWorld()
    run = _start_run(train, val, task, config, world, on_epoch)
    with progress_bar(disable=not world.is_chief) as bar:
        for stage_index, (stage, epochs, lr) in enumerate(_stages(config, run.init)):
            _run_stage(run, bar, stage_index, stage, epochs, lr)
    model = _best_model(run)
    return model, _result(run)
