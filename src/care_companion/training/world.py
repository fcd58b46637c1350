"""The processes a training run is shared by, and the state that lets a run continue after an interruption.

:class:`LocalWorld` is one process (checkpoints in a local folder, when given one). ``training/distributed.py``
provides the Ray Train world: several workers averaging gradients (DDP), checkpoints reported to Ray.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
T = TypeVar("T")


class TrainState(BaseModel):
    """Everything a run needs to continue where it stopped; saved after every epoch."""

    model_config = {"arbitrary_types_allowed": True}

    stage_index: int = 0
    epoch: int = Field(default=0, description="Epochs finished in the current stage.")
    stage_done: bool = False
    history: list[dict[str, Any]] = Field(default_factory=list)
    best: dict[str, Any] = Field(default_factory=lambda: {"score": -1.0, "val_loss": float("inf")})
    stale: int = 0
    seen: int = 0
    train_seconds: float = 0.0
    weights: dict[str, Any] | None = None
    best_weights: dict[str, Any] | None = None
    optimiser: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None


def save_state(state: TrainState, directory: Path) -> Path:
    """Write ``state`` into ``directory`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / STATE_FILE
    tmp = target.with_suffix(".tmp")
    torch.save(dict(state), tmp)
    tmp.replace(target)
    return target


def load_state(directory: Path) -> TrainState | None:
    """The state saved in ``directory``, or None when there is none."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    return TrainState(**torch.load(path, map_location="cpu", weights_only=False))


class World(Protocol):
    """The processes of one training run, seen from one of them."""

    rank: int
    size: int

    @property
    def is_chief(self) -> bool:
        """Rank 0: validates, logs and checkpoints."""
        ...

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train through (DDP across processes); call again after changing what is trained."""
        ...

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over every process."""
        ...

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every process."""
        ...

    def save(self, state: TrainState | None) -> None:
        """Checkpoint after an epoch (every rank calls it; only rank 0 passes a state)."""
        ...

    def restored(self) -> TrainState | None:
        """The state to resume from, if this run is a continuation."""
        ...


class LocalWorld:
    """This process alone; with ``checkpoint_dir`` it saves every epoch there and resumes from it."""

    rank = 0
    size = 1

    def __init__(self, checkpoint_dir: Path | None = None) -> None:
        self.checkpoint_dir = checkpoint_dir

    @property
    def is_chief(self) -> bool:
        """Always true."""
        return True

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model itself."""
        return model

    def sum(self, values: np.ndarray) -> np.ndarray:
        """The values themselves."""
        return values

    def broadcast(self, value: T) -> T:
        """The value itself."""
        return value

    def save(self, state: TrainState | None) -> None:
        """Save to ``checkpoint_dir`` (nothing without one)."""
        if state is not None and self.checkpoint_dir is not None:
            save_state(state, self.checkpoint_dir)

    def restored(self) -> TrainState | None:
        """The state in ``checkpoint_dir``, if any."""
        return load_state(self.checkpoint_dir) if self.checkpoint_dir is not None else None
