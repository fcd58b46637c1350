"""Data-parallel training on Ray Train: the same two-stage trainer in N workers that average gradients.

A local Ray instance is started by default; ``RAY_ADDRESS`` (or ``address``) joins an existing cluster. The
data travel once through Ray's object store. Each worker trains on its shard of every epoch's draw (the
global batch stays the recipe's), rank 0 validates, logs (MLflow) and checkpoints after every epoch, and a
run started again under the same name continues from its latest checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from care_companion.data.datasets import ArrayData
from care_companion.errors import ConfigError, ModelError
from care_companion.models.base import BackboneClassifier
from care_companion.models.factory import create_model
from care_companion.tasks import TaskSpec
from care_companion.training.trainer import EpochCallback, TrainConfig, TrainResult, train_classifier
from care_companion.training.world import TrainState, load_state, save_state

log = logging.getLogger(__name__)

T = TypeVar("T")
RESULT_FILE = "result.pt"


class RayWorld:
    """One Ray Train worker's view of the run (inside ``train_loop_per_worker``)."""

    def __init__(self, find_unused_parameters: bool = False) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank: int = context.get_world_rank()
        self.size: int = context.get_world_size()
        self._find_unused = find_unused_parameters

    @property
    def is_chief(self) -> bool:
        """Rank 0."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model in DistributedDataParallel when there are several workers (on the worker's device)."""
        import ray.train.torch

        if self.size == 1:
            return model
        kwargs = {"find_unused_parameters": self._find_unused}
        return ray.train.torch.prepare_model(model, move_to_device=False, parallel_strategy_kwargs=kwargs)

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the workers (all-reduce)."""
        if self.size == 1:
            return values
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float64))
        torch.distributed.all_reduce(tensor)
        return tensor.numpy()

    def broadcast(self, value: T) -> T:
        """Rank 0's value on every worker."""
        if self.size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def save(self, state: TrainState | None) -> None:
        """Report the epoch to Ray, with rank 0's checkpoint."""
        import ray.train

        last = state.history[-1] if state is not None and state.history else {}
        metrics = {k: v for k, v in last.items() if isinstance(v, int | float)}
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_state(state, Path(directory))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    def restored(self) -> TrainState | None:
        """The latest checkpoint of this run, when Ray is resuming it."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_state(Path(directory))


def _worker_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: train, then rank 0 reports the best weights and the result."""
    import ray
    import ray.train

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(config["threads"])
    previous = ray.train.get_checkpoint()
    if previous is not None:
        with previous.as_directory() as directory:
            finished = (Path(directory) / RESULT_FILE).is_file()
        if finished:  # the run being resumed had already finished: hand its result back as it is
            ray.train.report(
                {"done": 1}, checkpoint=previous if ray.train.get_context().get_world_rank() == 0 else None
            )
            return
    train, val = ray.get(config["train"]), ray.get(config["val"])
    task = TaskSpec.model_validate(config["task"])
    world = RayWorld(find_unused_parameters=task.multiview)
    model, result = train_classifier(
        train, val, task, TrainConfig.model_validate(config["config"]), on_epoch=config["on_epoch"], world=world
    )
    if not world.is_chief:
        ray.train.report({"done": 1})
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save({"weights": model.state_dict(), "result": result.model_dump()}, Path(directory) / RESULT_FILE)
        ray.train.report({"done": 1}, checkpoint=ray.train.Checkpoint.from_directory(directory))


def train_on_ray(
    train: ArrayData,
    val: ArrayData,
    task: TaskSpec,
    config: TrainConfig,
    *,
    workers: int,
    storage: Path | str,
    name: str,
    on_epoch: EpochCallback | None = None,
    address: str | None = None,
    use_gpu: bool | None = None,
    max_failures: int = 1,
) -> tuple[BackboneClassifier, TrainResult]:
    """Train with ``workers`` Ray Train workers and return the best model, as :func:`train_classifier` does.

    Args:
        train, val, task, config: as for :func:`train_classifier`.
        workers: number of training workers (processes).
        storage: where Ray keeps checkpoints (a folder, or a URI such as ``s3://bucket/ray`` for a cluster).
        name: the run's name; starting a run again under the same name and storage resumes it.
        on_epoch: per-epoch metrics callback, called on rank 0 (it must pickle: it runs in the worker).
        address: a Ray cluster (default ``RAY_ADDRESS``, else a local instance of this machine's cores).
        use_gpu: one GPU per worker (default: when the cluster has GPUs).
        max_failures: worker failures Ray recovers from (restarting from the latest checkpoint).
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    address = address or os.environ.get("RAY_ADDRESS")
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        gpu = bool(gpus) if use_gpu is None else use_gpu
        threads = max(1, cpus // workers) if not address else max(1, (os.cpu_count() or 1) // workers)
        log.info("Ray Train: %d workers, %d threads each%s", workers, threads, ", GPUs" if gpu else "")
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={
                "train": ray.put(train),
                "val": ray.put(val),
                "task": task.model_dump(mode="json"),
                "config": config.model_dump(mode="json"),
                "on_epoch": on_epoch,
                "threads": threads,
            },
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(
                name=name, storage_path=str(storage), failure_config=FailureConfig(max_failures=max_failures)
            ),
        )
        try:
            outcome = trainer.fit()
        except TrainingFailedError as exc:
            raise ModelError(f"distributed training failed (resume it with the same run name): {exc}") from exc
    finally:
        if owns_ray:
            ray.shutdown()
    if outcome.error is not None:
        raise ModelError(f"distributed training failed: {outcome.error}") from outcome.error
    if outcome.checkpoint is None:
        raise ModelError("distributed training ended without a checkpoint")
    with outcome.checkpoint.as_directory() as directory:
        final = torch.load(Path(directory) / RESULT_FILE, map_location="cpu", weights_only=False)
    model, _ = create_model(task, config.backbone, output_stride=config.output_stride)
    model.load_state_dict(final["weights"])
    model.eval()
    return model, TrainResult.model_validate(final["result"])
