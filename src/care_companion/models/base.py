"""What every classifier offers the trainer, the ONNX export and the tests, whatever its number of views."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


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


def pooled(net: nn.Module, fm: torch.Tensor) -> torch.Tensor:
    """A timm backbone's pooled features [N, F] of its last feature map (what ``net(x)`` returns)."""
    return cast(torch.Tensor, net.forward_head(fm))  # type: ignore[operator]


def last_weight(head: nn.Module) -> torch.Tensor:
    """The weight of the last linear layer of a ``Sequential`` head."""
    layer = cast(nn.Sequential, head)[-1]
    return cast(nn.Linear, layer).weight
