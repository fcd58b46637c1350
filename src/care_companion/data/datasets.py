"""In-memory training data: cached uint8 images, labels, and batched GPU/CPU-friendly augmentation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ArrayData:
    """Training items: cached uint8 images [M, S, S], integer labels [N], optional per-item group names.

    Single-view tasks: item ``i`` is image ``i`` (``views`` is None, M == N). Multi-view tasks: item ``i`` is a
    study whose view ``v`` is image ``views[i, v]`` (-1: that view is missing); ``images`` is the whole cache
    and is shared, never copied, by subsets.
    """

    images: np.ndarray
    labels: np.ndarray
    groups: dict[str, np.ndarray] | None = None
    views: np.ndarray | None = None
    view_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ArrayData:
        """The items at ``index``."""
        groups = {k: v[index] for k, v in self.groups.items()} if self.groups else None
        if self.views is None:
            return ArrayData(images=self.images[index], labels=self.labels[index], groups=groups)
        return replace(self, labels=self.labels[index], groups=groups, views=self.views[index])

    def study(self, i: int) -> dict[str, np.ndarray | None]:
        """Item ``i`` as {view name: uint8 image or None} (a single-view item under the name "image")."""
        if self.views is None:
            return {"image": self.images[i]}
        return {
            name: (self.images[j] if j >= 0 else None) for name, j in zip(self.view_names, self.views[i], strict=True)
        }

    def views_used(self) -> np.ndarray:
        """Per item, how many views it has [N] (1 for single-view data)."""
        if self.views is None:
            return np.ones(len(self), dtype=np.int64)
        return (self.views >= 0).sum(axis=1)


def to_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 [N, S, S] to normalised float32 [N, 1, S, S] (same arithmetic as the inference path)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.sub_(mean).div_(std).unsqueeze(1)


@dataclass(frozen=True)
class Augment:
    """Random flips, small rotations and scale changes, brightness/contrast and gamma, applied per image."""

    hflip: float = 0.5
    max_rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    max_shift: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.15
    gamma: tuple[float, float] = (0.8, 1.25)

    def __call__(self, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """Augmented float images in [0, 1], shape [N, 1, S, S]."""
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
        n = x.shape[0]

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(n, generator=generator) * (hi - lo) + lo

        angle = uniform(-self.max_rotation_deg, self.max_rotation_deg) * math.pi / 180
        scale = uniform(*self.scale)
        flip = torch.where(torch.rand(n, generator=generator) < self.hflip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
        theta[:, :, 2] = (torch.rand(n, 2, generator=generator) * 2 - 1) * self.max_shift
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        gamma = uniform(*self.gamma).view(n, 1, 1, 1)
        x = x.clamp_(1e-6, 1).pow_(gamma)
        contrast = uniform(1 - self.contrast, 1 + self.contrast).view(n, 1, 1, 1)
        bright = uniform(-self.brightness, self.brightness).view(n, 1, 1, 1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        return ((x - mean) * contrast + mean + bright).clamp_(0, 1)


def _pixels(
    images: np.ndarray, mean: float, std: float, augment: Augment | None, generator: torch.Generator | None
) -> torch.Tensor:
    if augment is not None:
        return augment(images, generator or torch.Generator()).sub_(mean).div_(std)
    return to_tensor(images, mean, std)


def model_inputs(
    data: ArrayData,
    idx: np.ndarray,
    *,
    mean: float,
    std: float,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """The model's inputs for the items at ``idx``: ``(image [B, 1, S, S],)`` for single-view data, or
    ``(images [B, V, 1, S, S], present [B, V])`` for studies, missing views all zero."""
    if data.views is None:
        return (_pixels(data.images[idx], mean, std, augment, generator),)
    views = data.views[idx]
    present = views >= 0
    side = data.images.shape[-1]
    out = torch.zeros(len(idx), views.shape[1], 1, side, side)
    if present.any():
        wanted = np.sort(np.unique(views[present]))
        pixels = _pixels(data.images[wanted], mean, std, augment, generator)
        out[torch.from_numpy(present)] = pixels[torch.from_numpy(np.searchsorted(wanted, views[present]))]
    return out, torch.from_numpy(present.astype(np.float32))


def batches(
    data: ArrayData,
    batch_size: int,
    *,
    mean: float,
    std: float,
    order: np.ndarray | None = None,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """Yield (model inputs, labels) batches in ``order`` (default: data order), augmented when asked."""
    order = np.arange(len(data)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size])  # sorted reads are kinder to the memory map
        inputs = model_inputs(data, idx, mean=mean, std=std, augment=augment, generator=generator)
        yield inputs, torch.from_numpy(data.labels[idx].astype(np.int64))
