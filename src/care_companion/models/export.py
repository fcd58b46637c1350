"""ONNX export of trained classifiers, checked against PyTorch before it is trusted."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from care_companion.errors import ModelError
from care_companion.models.base import BackboneClassifier
from care_companion.models.bundle import CLASS_MAPS_OUTPUT, EMBEDDING_OUTPUT, LOGITS_OUTPUT, VIEW_EMBEDDINGS_OUTPUT
from care_companion.models.multiview import MultiViewClassifier

OPSET = 17


class _Outputs(torch.nn.Module):
    """The classifier with the outputs the service reads besides its logits: the penultimate-layer embedding (drift
    monitoring), for a multi-view model its views' pooled backbone features (the out-of-distribution gate), and,
    when ``maps``, each class's activation map (heat maps)."""

    def __init__(self, model: BackboneClassifier, *, maps: bool) -> None:
        super().__init__()
        self.model = model
        self.maps = maps

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.maps:
            return self.model.explained(*inputs)
        embedding: torch.Tensor = self.model.features(*inputs)  # type: ignore[operator]
        logits: torch.Tensor = self.model.head(embedding)
        if isinstance(self.model, MultiViewClassifier):
            return logits, embedding, self.model.view_features(*inputs)
        return logits, embedding


def output_names(model: BackboneClassifier) -> list[str]:
    """The ONNX outputs :func:`export_onnx` writes for ``model``, in order."""
    outputs = [LOGITS_OUTPUT, EMBEDDING_OUTPUT]
    if isinstance(model, MultiViewClassifier):
        outputs.append(VIEW_EMBEDDINGS_OUTPUT)
    if model.supports_class_maps():
        outputs.append(CLASS_MAPS_OUTPUT)
    return outputs


def export_onnx(model: BackboneClassifier, path: Path, *, input_size: int, atol: float = 1e-4, seed: int = 0) -> float:
    """Export ``model`` to ONNX with a dynamic batch axis on every input and check it against PyTorch.

    The ONNX inputs are named after ``model.input_names`` ("image" for one view; "images" and "present" for
    several), the outputs "logits" and "embedding" (the penultimate layer, which drift monitoring compares with
    the training data's), for several views "view_embeddings" (what the out-of-distribution gate scores), and
    "class_maps" (heat maps) when the model's class maps are Grad-CAM (:meth:`supports_class_maps`).
    The check batch comes from ``model.example_inputs`` (for a multi-view model
    it holds studies with a missing view). The file is only written, atomically, when the check passes.

    Args:
        model: the classifier (put in eval mode here).
        path: the ``.onnx`` file to write.
        input_size: square input side.
        atol: largest allowed absolute logit difference between ONNX Runtime and PyTorch.
        seed: seed of the random example and check inputs.

    Returns:
        The largest absolute difference seen on the check batch.
    """
    import onnxruntime as ort

    model.eval()
    outputs = output_names(model)
    wrapped = _Outputs(model, maps=CLASS_MAPS_OUTPUT in outputs).eval()  # export restores the wrapper's mode
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(model.input_names)
    generator = torch.Generator().manual_seed(seed)
    example = model.example_inputs(2, input_size, generator)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            example,
            str(tmp),
            input_names=names,
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [*names, *outputs]},
            opset_version=OPSET,
            dynamo=False,
        )
    check = model.example_inputs(5, input_size, generator)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = [t.numpy() for t in wrapped(*check)]
    got = session.run(outputs, {name: t.numpy() for name, t in zip(names, check, strict=True)})
    diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
    if diff > atol:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"ONNX export differs from PyTorch by {diff:.2e} (> {atol:.0e}); not exported")
    tmp.replace(path)
    return diff
