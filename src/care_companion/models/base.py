"""What every classifier offers the trainer, the ONNX export and the tests, whatever its number of views."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn

from care_companion.models.heatmap import MapCentres


class BackboneClassifier(nn.Module):
    """A classifier made of timm backbones (``self.backbone``) and trainable parts around them (the head).

    Subclasses set ``input_names`` (the ONNX input names, in ``forward``'s argument order), build
    ``self.backbone`` and implement :meth:`example_inputs`, :meth:`features` and ``forward``.
    """

    input_names: tuple[str, ...] = ()
    backbone: nn.Module
    head: nn.Module  # maps :meth:`features` to logits
    _frozen: bool = False

    def example_inputs(
        self, batch: int, size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Random inputs of ``batch`` items at ``size`` px, in ``input_names`` order (export tracing and checks)."""
        raise NotImplementedError

    def explained(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """From one pass: logits [N, C], the embedding [N, D], for several views each view's pooled features
        [N, V, F], and last each class's activation map before ReLU, [N, C, h, w] for one view or [N, V, C, h, w]
        (see :func:`care_companion.models.heatmap`): the last feature map weighted by the gradient of the class's
        logit with respect to its pooled features, which is Grad-CAM up to scale when pooling is a mean."""
        raise NotImplementedError

    def supports_class_maps(self) -> bool:
        """Whether :meth:`explained` gives class maps that are Grad-CAM (see :func:`pools_by_mean`)."""
        return False

    def map_centres(self, size: int) -> MapCentres | None:
        """Where the class maps' cells are centred on a ``size`` px input (:func:`receptive_centres`, on the first
        backbone: every view's backbone has one architecture when the model has maps); None without class maps."""
        if not self.supports_class_maps():
            return None
        net = self.backbone[0] if isinstance(self.backbone, nn.ModuleList) else self.backbone
        return receptive_centres(net, size)

    def backbone_prefixes(self) -> list[str]:
        """State-dict prefixes of the distinct backbones (where backbone-only checkpoints are loaded)."""
        return ["backbone."]

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) every backbone parameter; batch-norm statistics freeze with them.

        While frozen, the backbone stays in eval mode even when ``train()`` is called on the whole model.
        """
        for p in self.backbone.parameters():
            p.requires_grad = not frozen
        self._frozen = frozen
        self.backbone.train(not frozen and self.training)

    def train(self, mode: bool = True) -> BackboneClassifier:
        """Set training mode, keeping a frozen backbone in eval mode."""
        super().train(mode)
        if self._frozen:
            self.backbone.eval()
        return self


def pools_by_mean(net: nn.Module, size: int = 64) -> bool:
    """Whether a timm backbone's pooled output is the spatial mean of its last feature map (ResNet, DenseNet,
    EfficientNet; not MobileNetV3 or LCNet, whose head layer follows the pooling): the condition under which a
    class map from the head's gradient is Grad-CAM."""
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            x = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))
            fm = net.forward_features(x)  # type: ignore[operator]
            pooled = net.forward_head(fm)  # type: ignore[operator]
        return (
            fm.ndim == 4 and pooled.shape == fm.shape[:2] and bool(torch.allclose(pooled, fm.mean((2, 3)), atol=1e-5))
        )
    finally:
        net.train(was_training)


def feature_map(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm backbone's last feature map [N, F, h, w] (before pooling)."""
    return cast(torch.Tensor, net.forward_features(x))  # type: ignore[operator]


def median_position(weights: np.ndarray) -> float:
    """The weighted median of positions along an axis of pixels, pixel ``k`` spanning ``[k, k + 1)`` with mass
    ``weights[k]`` spread evenly over it (all mass on pixel ``k``: its centre, ``k + 0.5``)."""
    share = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    cumulative = np.cumsum(share)
    k = min(int(np.searchsorted(cumulative, 0.5)), len(share) - 1)
    before = cumulative[k - 1] if k else 0.0
    return k + (0.5 - before) / share[k]


def receptive_centres(net: nn.Module, size: int, *, samples: int = 4, seed: int = 0) -> MapCentres:
    """Where each row and column of a timm backbone's last feature map is centred on a ``size`` px input: the
    median, along the axis, of the gradient magnitude of the row's (column's) features with respect to random
    inputs (its effective receptive field, Luo et al. 2016), as fractions of the side. Padding and strided layers
    move these off an even split of the input (by about 5 px on a 96 px input for the demo's model at stride 8);
    the median is used rather than the mean, which the image border pulls inwards for the outer cells."""
    was_training = net.training
    net.eval()
    try:
        x = torch.randn(samples, 1, size, size, generator=torch.Generator().manual_seed(seed), requires_grad=True)
        with torch.enable_grad():
            fm = feature_map(net, x)

            def centre(part: torch.Tensor, axis: int) -> float:
                (grad,) = torch.autograd.grad(part.abs().sum(), x, retain_graph=True)
                profile = grad.abs().sum(dim=(0, 1, 5 - axis)).double().numpy()  # over samples, channels, other axis
                return median_position(profile) / size

            rows = [centre(fm[:, :, i, :], 2) for i in range(fm.shape[2])]
            cols = [centre(fm[:, :, :, j], 3) for j in range(fm.shape[3])]
        return MapCentres(rows=rows, cols=cols)
    finally:
        net.train(was_training)


def pooled(net: nn.Module, fm: torch.Tensor) -> torch.Tensor:
    """A timm backbone's pooled features [N, F] of its last feature map (what ``net(x)`` returns)."""
    return cast(torch.Tensor, net.forward_head(fm))  # type: ignore[operator]


def last_weight(head: nn.Module) -> torch.Tensor:
    """The weight of the last linear layer of a ``Sequential`` head."""
    layer = cast(nn.Sequential, head)[-1]
    return cast(nn.Linear, layer).weight
