"""What every classifier offers the trainer, the ONNX export and the tests, whatever its number of views."""

from __future__ import annotations

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
