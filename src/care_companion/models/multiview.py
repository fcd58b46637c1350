"""A classifier of studies with several views (wrist PA + lateral) that still answers when views are missing.

Each view goes through its backbone (one per view, or one shared by all), its pooled features are projected
to a common width, a missing view's projection is replaced by a learned stand-in vector, and a small MLP reads
the concatenated view vectors together with the presence mask. A missing view's pixels therefore never reach
the output. In training, view dropout hides one present view of some studies so one-view studies are learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from care_companion.models.base import BackboneClassifier, feature_map, last_weight, pooled, pools_by_mean
from care_companion.models.bundle import IMAGES_INPUT, PRESENT_INPUT


class MultiViewClassifier(BackboneClassifier):
    """Late fusion of per-view backbone features with learned stand-ins for missing views.

    Args:
        backbones: one backbone shared by every view, or one per view in ``views`` order.
        num_features: pooled feature width of each backbone (same order).
        views: view names, in the order of the ``images`` input's second axis.
        num_classes: outputs.
        embed_dim: common width each view's features are projected to (also the fused embedding's width).
        drop_rate: dropout before each layer of the fusion head.
        view_dropout: chance per training study (with two or more views present) that one present view is hidden.
    """

    input_names = (IMAGES_INPUT, PRESENT_INPUT)
    backbone: nn.ModuleList

    def __init__(
        self,
        backbones: Sequence[nn.Module],
        num_features: Sequence[int],
        views: Sequence[str],
        num_classes: int,
        *,
        embed_dim: int = 256,
        drop_rate: float = 0.2,
        view_dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if len(backbones) not in (1, len(views)) or len(num_features) != len(backbones):
            raise ValueError(f"need one backbone (shared) or {len(views)} (one per view), with a width each")
        self.views = list(views)
        self.view_dropout = view_dropout
        self.backbone = nn.ModuleList(backbones)
        self._slots = [0] * len(views) if len(backbones) == 1 else list(range(len(views)))
        self._widths = [num_features[slot] for slot in self._slots]
        self.project = nn.ModuleList(nn.Linear(width, embed_dim) for width in self._widths)
        self.stand_in = nn.Parameter(0.02 * torch.randn(len(views), embed_dim))
        fused = len(views) * (embed_dim + 1)
        self.fusion = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(fused, embed_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(embed_dim, num_classes))

    def backbone_prefixes(self) -> list[str]:
        """One prefix per distinct backbone: ``backbone.0.``, ``backbone.1.``..."""
        return [f"backbone.{i}." for i in range(len(self.backbone))]

    def example_inputs(
        self, batch: int, size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Random studies [batch, V, 1, size, size] and their mask; items cycle through "view k missing" for
        each view k and "all present", so any batch of two or more items has a study with a missing view."""
        count = len(self.views)
        images = torch.randn(batch, count, 1, size, size, generator=generator)
        present = torch.ones(batch, count)
        if count > 1:
            for i in range(batch):
                if i % (count + 1) < count:
                    present[i, i % (count + 1)] = 0.0
        return images * present[:, :, None, None, None], present

    def view_mask(self, present: torch.Tensor) -> torch.Tensor:
        """The views used: ``present``, with view dropout applied in training mode (never hiding every view)."""
        if not self.training or self.view_dropout <= 0 or present.shape[1] < 2:
            return present
        shown = present > 0.5
        hide = (torch.rand(present.shape[0], device=present.device) < self.view_dropout) & (shown.sum(1) > 1)
        pick = torch.rand(present.shape, device=present.device).masked_fill(~shown, -1.0).argmax(1)
        hidden = F.one_hot(pick, present.shape[1]).bool() & hide[:, None]
        return present.masked_fill(hidden, 0.0)

    def _view_features(self, view: int, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features [N, F] of one view. In training only present items go through the backbone
        (missing views' zeros stay out of batch-norm statistics); absent rows are zeros and later replaced."""
        net = self.backbone[self._slots[view]]
        x = images[:, view]
        if not self.training:
            return net(x)
        rows = (present[:, view] > 0.5).nonzero().squeeze(1)
        if rows.numel() == 0:
            return x.new_zeros(x.shape[0], self._widths[view])
        feats = net(x[rows])
        return feats.new_zeros(x.shape[0], feats.shape[1]).index_copy(0, rows, feats)

    def view_features(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Each view's pooled backbone features [N, V, F] in view order, zero-padded to the widest backbone's F
        (what the out-of-distribution gate scores; a missing view's row is whatever its zeros give, and is
        ignored)."""
        widest = max(self._widths)
        rows = [self._view_features(view, images, present) for view in range(len(self.views))]
        return torch.stack([F.pad(row, (0, widest - row.shape[1])) for row in rows], dim=1)

    def features(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The fused embedding [N, embed_dim] (penultimate layer) of studies [N, V, 1, S, S] with mask [N, V]."""
        mask = self.view_mask(present)
        vectors = []
        for view in range(len(self.views)):
            projected = self.project[view](self._view_features(view, images, mask))
            given = mask[:, view : view + 1] > 0.5
            vectors.append(torch.where(given, projected, self.stand_in[view].to(projected.dtype)))
        return self.fusion(torch.cat([*vectors, mask.to(vectors[0].dtype)], dim=1))

    def forward(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Logits [N, C] for studies [N, V, 1, S, S] (zeros where a view is missing) and their mask [N, V] (0/1)."""
        return self.head(self.features(images, present))

    def supports_class_maps(self) -> bool:
        """Whether :meth:`explained`'s class maps are Grad-CAM: every backbone pools by a mean, and all are of one
        architecture (their maps stack)."""
        nets = list(self.backbone)
        return len({type(n).__name__ for n in nets}) == 1 and all(pools_by_mean(n) for n in nets)

    def explained(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits, embedding, view features and class maps [N, V, C, h, w] from one pass (eval mode).

        A view's map weights its last feature map by the gradient of each logit with respect to the view's pooled
        features: head weights, times the fusion's ReLU pattern for this study, through the fusion and the view's
        projection. A missing view's map is zero (its pixels never reach the output)."""
        images, present = inputs
        maps, pools, vectors = [], [], []
        for view in range(len(self.views)):
            net = self.backbone[self._slots[view]]
            fm = feature_map(net, images[:, view])
            maps.append(fm)
            pools.append(pooled(net, fm))
            given = present[:, view : view + 1] > 0.5
            projected = self.project[view](pools[-1])
            vectors.append(torch.where(given, projected, self.stand_in[view].to(projected.dtype)))
        embedding = self.fusion(torch.cat([*vectors, present.to(vectors[0].dtype)], dim=1))
        logits = self.head(embedding)
        width = self.stand_in.shape[1]
        fusion, head = last_weight(self.fusion[:2]), last_weight(self.head)  # [E, V * (E + 1)], [C, E]
        through = head[None] * (embedding > 0).to(head.dtype)[:, None, :]  # d logit / d fused pre-activation
        class_maps = []
        for view, fm in enumerate(maps):
            project = cast(nn.Linear, self.project[view]).weight
            grad = through @ fusion[:, view * width : (view + 1) * width] @ project  # [N, C, F]
            grad = grad * present[:, view, None, None].to(grad.dtype)
            class_maps.append(torch.einsum("ncf,nfhw->nchw", grad, fm))
        widest = max(self._widths)
        views = torch.stack([F.pad(p, (0, widest - p.shape[1])) for p in pools], dim=1)
        return logits, embedding, views, torch.stack(class_maps, dim=1)
