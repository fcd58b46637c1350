"""Backbones by name (timm) with one input channel and our own classification head."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import torch
from torch import nn

from care_companion.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


class Classifier(nn.Module):
    """A timm backbone (global-pooled features) followed by a dropout + linear head."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, drop_rate: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(num_features, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer embedding."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of normalised grayscale images [N, 1, H, W]."""
        return self.head(self.backbone(x))

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) every backbone parameter; batch-norm statistics freeze with them."""
        for p in self.backbone.parameters():
            p.requires_grad = not frozen
        self.backbone.train(not frozen and self.training)


def create_classifier(
    backbone: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    init_weights: Path | None = None,
    drop_rate: float = 0.2,
) -> tuple[Classifier, str]:
    """Build a one-channel classifier and say where its starting weights came from.

    Args:
        backbone: any timm model name (resnet18, efficientnet_b1, densenet121, mobilenetv3_large_100...).
        num_classes: outputs of the head.
        pretrained: try timm's published weights (needs them in the local cache or a reachable hub).
        init_weights: a local checkpoint (our ``model.pt`` or a timm/torchvision state dict) to start from.
        drop_rate: dropout before the linear head.

    Returns:
        The model and a one-line description of its initialisation for the log.
    """
    import timm

    if not timm.is_model(backbone):
        raise ConfigError(f"unknown backbone {backbone!r}; see timm.list_models() for valid names")
    origin = "random initialisation (training from scratch)"
    net = None
    if pretrained:
        try:
            net = timm.create_model(backbone, pretrained=True, num_classes=0, in_chans=1)
            origin = "timm pretrained weights"
        except Exception as exc:  # hub unreachable, weights not cached, no weights for this name
            log.warning("pretrained weights for %s not reachable (%s); training from scratch", backbone, exc)
    if net is None:
        net = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=1)
    model = Classifier(net, cast(int, net.num_features), num_classes, drop_rate)
    if init_weights is not None:
        load_init_weights(model, Path(init_weights))
        origin = f"local checkpoint {init_weights}"
    return model, origin


def load_init_weights(model: Classifier, path: Path) -> None:
    """Load a checkpoint into ``model``: a full Classifier state dict or a bare backbone state dict.

    Three-channel first convolutions are summed to one channel; the head is kept when its shape differs.
    """
    if not path.is_file():
        raise ModelError(f"{path}: initial weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable PyTorch checkpoint: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    own = model.state_dict()
    usable = {}
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.ndim == 4 and target.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape == target.shape:
            usable[key] = value
    if not any(k.startswith("backbone.") for k in usable):
        raise ModelError(f"{path}: no weights match the {type(model.backbone).__name__} backbone")
    missing = model.load_state_dict(usable, strict=False).missing_keys
    log.info("loaded %d tensors from %s (%d left at initialisation)", len(usable), path, len(missing))
