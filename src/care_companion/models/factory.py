"""Models by name: timm backbones with one input channel and our own head, one view or several."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from care_companion.errors import ConfigError, ModelError
from care_companion.models.base import BackboneClassifier, feature_map, last_weight, pooled, pools_by_mean
from care_companion.models.bundle import IMAGE_INPUT
from care_companion.models.multiview import MultiViewClassifier
from care_companion.tasks import TaskSpec

log = logging.getLogger(__name__)


class Classifier(BackboneClassifier):
    """A timm backbone (global-pooled features) followed by a dropout + linear head: one view per input."""

    input_names = (IMAGE_INPUT,)

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, drop_rate: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(num_features, num_classes))

    def example_inputs(
        self, batch: int, size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """One random image batch [batch, 1, size, size]."""
        return (torch.randn(batch, 1, size, size, generator=generator),)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer embedding."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of normalised grayscale images [N, 1, H, W]."""
        return self.head(self.backbone(x))

    def supports_class_maps(self) -> bool:
        """Whether :meth:`explained`'s class maps are Grad-CAM (the backbone pools by a mean)."""
        return pools_by_mean(self.backbone)

    def explained(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits, embedding and class maps [N, C, h, w] (the head's weights over the last feature map)."""
        fm = feature_map(self.backbone, inputs[0])
        embedding = pooled(self.backbone, fm)
        weight = last_weight(self.head)  # [C, F]: the gradient of each logit with respect to the pooled features
        return self.head(embedding), embedding, torch.einsum("cf,nfhw->nchw", weight, fm)


RANDOM_ORIGIN = "random initialisation (training from scratch)"


def create_backbone(name: str, *, pretrained: bool = False, output_stride: int = 32) -> tuple[nn.Module, int, str]:
    """A one-channel timm backbone without classifier (global-pooled features).

    Args:
        name: any timm model name (resnet18, efficientnet_b1, densenet121, mobilenetv3_large_100...).
        pretrained: try timm's published weights (needs them in the local cache or a reachable hub).
        output_stride: 16 dilates the last stage, 8 the last two (finer feature map and heat maps); 32 is usual.

    Returns:
        The backbone, its feature width and where its weights came from.
    """
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"unknown backbone {name!r}; see timm.list_models() for valid names")
    extra: dict[str, Any] = {} if output_stride == 32 else {"output_stride": output_stride}
    if pretrained:
        try:
            net = timm.create_model(name, pretrained=True, num_classes=0, in_chans=1, **extra)
            return net, feature_width(net), "timm pretrained weights"
        except Exception as exc:  # hub unreachable, weights not cached, no weights for this name
            log.warning("pretrained weights for %s not reachable (%s); training from scratch", name, exc)
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=1, **extra)
    except TypeError as exc:
        raise ConfigError(f"backbone {name!r} does not take output_stride={output_stride}: {exc}") from exc
    return net, feature_width(net), RANDOM_ORIGIN


def feature_width(net: nn.Module) -> int:
    """Width of a classifier-less timm backbone's output: its ``head_hidden_size`` where a head layer follows the
    pooling (MobileNetV3, LCNet: wider than ``num_features``), else ``num_features``."""
    hidden = getattr(net, "head_hidden_size", None)
    return int(hidden) if hidden else cast(int, net.num_features)


def create_classifier(
    backbone: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    init_weights: Path | None = None,
    drop_rate: float = 0.2,
    output_stride: int = 32,
) -> tuple[Classifier, str]:
    """Build a one-channel single-view classifier and say where its starting weights came from.

    Args:
        backbone: any timm model name (resnet18, efficientnet_b1, densenet121, mobilenetv3_large_100...).
        num_classes: outputs of the head.
        pretrained: try timm's published weights (needs them in the local cache or a reachable hub).
        init_weights: a local checkpoint (our ``model.pt`` or a timm/torchvision state dict) to start from.
        drop_rate: dropout before the linear head.
        output_stride: the backbone's (see :func:`create_backbone`).

    Returns:
        The model and a one-line description of its initialisation for the log.
    """
    net, width, origin = create_backbone(backbone, pretrained=pretrained, output_stride=output_stride)
    model = Classifier(net, width, num_classes, drop_rate)
    if init_weights is not None:
        load_init_weights(model, Path(init_weights))
        origin = f"local checkpoint {init_weights}"
    return model, origin


def backbone_names(task: TaskSpec, backbone: str) -> list[str]:
    """Split a backbone option: one name (shared by every view) or a comma-separated name per view."""
    names = [name.strip() for name in backbone.split(",")]
    if len(names) == 1 or (task.multiview and len(names) == len(task.views)):
        return names
    raise ConfigError(
        f"task {task.name} has views {', '.join(task.views)}: give one backbone"
        + (" (shared by all views) or one per view, comma-separated" if task.multiview else "")
        + f", not {backbone!r}"
    )


def create_model(
    task: TaskSpec,
    backbone: str,
    *,
    pretrained: bool = False,
    init_weights: Path | None = None,
    drop_rate: float = 0.2,
    view_dropout: float = 0.25,
    output_stride: int = 32,
) -> tuple[BackboneClassifier, str]:
    """The model for a task: a :class:`Classifier` for one view, a :class:`MultiViewClassifier` for several.

    Args:
        task: classes and views.
        backbone: a timm name, or for a multi-view task either one name (one backbone shared by all views)
            or one name per view in ``task.views`` order, comma-separated ("resnet18,efficientnet_b0").
        pretrained: try timm's published weights.
        init_weights: a local checkpoint to start from (see :func:`load_init_weights`).
        drop_rate: dropout in the head.
        view_dropout: multi-view only: chance per training study that one of its present views is hidden.
        output_stride: every backbone's (see :func:`create_backbone`).

    Returns:
        The model and a one-line description of its initialisation for the log (it starts with "random"
        only when every backbone starts from random weights).
    """
    names = backbone_names(task, backbone)
    if len(task.views) == 1:
        return create_classifier(
            names[0],
            len(task.classes),
            pretrained=pretrained,
            init_weights=init_weights,
            drop_rate=drop_rate,
            output_stride=output_stride,
        )
    built = [create_backbone(name, pretrained=pretrained, output_stride=output_stride) for name in names]
    model = MultiViewClassifier(
        [net for net, _, _ in built],
        [width for _, width, _ in built],
        task.views,
        len(task.classes),
        drop_rate=drop_rate,
        view_dropout=view_dropout,
    )
    origins = [origin for _, _, origin in built]
    origin = (
        origins[0] if len(set(origins)) == 1 else "; ".join(f"{n}: {o}" for n, o in zip(names, origins, strict=True))
    )
    if init_weights is not None:
        load_init_weights(model, Path(init_weights))
        origin = f"local checkpoint {init_weights}"
    return model, origin


def load_init_weights(model: BackboneClassifier, path: Path) -> None:
    """Load a checkpoint into ``model``: a full state dict of the same architecture, or backbone weights only.

    Backbone-only checkpoints (a bare timm/torchvision state dict, or a single-view ``Classifier`` checkpoint
    loaded into a multi-view model) go into every backbone whose shapes match. Three-channel first
    convolutions are summed to one channel; tensors whose shape differs (e.g. a head) keep their initialisation.
    """
    if not path.is_file():
        raise ModelError(f"{path}: initial weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable PyTorch checkpoint: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    if not any(k.startswith("backbone.") and k in own for k in state):
        bare = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("head.")}
        state = {f"{prefix}{k}": v for prefix in model.backbone_prefixes() for k, v in bare.items()}
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


def load_bundle_model(directory: Path) -> BackboneClassifier:
    """The PyTorch model of a bundle, in eval mode: the architecture ``bundle.json`` names with the weights of
    ``model.pt``.

    Raises:
        ModelError: the bundle has no ``model.pt``, or its weights do not fit the architecture.
    """
    from care_companion.models.bundle import CHECKPOINT_FILE, load_meta

    meta = load_meta(directory)
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise ModelError(f"{directory}: bundle has no {CHECKPOINT_FILE}")
    model, _ = create_model(meta.task_spec(), meta.backbone, output_stride=meta.output_stride)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit a {meta.backbone} {meta.task} model: {exc}") from exc
    return model.eval()
