"""ONNX export of trained classifiers, checked against PyTorch before it is trusted."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from care_companion.errors import ModelError
from care_companion.models.base import BackboneClassifier
from care_companion.models.bundle import LOGITS_OUTPUT

OPSET = 17


def export_onnx(model: BackboneClassifier, path: Path, *, input_size: int, atol: float = 1e-4, seed: int = 0) -> float:
    """Export ``model`` to ONNX with a dynamic batch axis on every input and check it against PyTorch.

    The ONNX inputs are named after ``model.input_names`` ("image" for one view; "images" and "present" for
    several), the output "logits". The check batch comes from ``model.example_inputs`` (for a multi-view model
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
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(model.input_names)
    generator = torch.Generator().manual_seed(seed)
    example = model.example_inputs(2, input_size, generator)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(tmp),
            input_names=names,
            output_names=[LOGITS_OUTPUT],
            dynamic_axes={name: {0: "batch"} for name in [*names, LOGITS_OUTPUT]},
            opset_version=OPSET,
            dynamo=False,
        )
    check = model.example_inputs(5, input_size, generator)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(*check).numpy()
    got = session.run([LOGITS_OUTPUT], {name: t.numpy() for name, t in zip(names, check, strict=True)})[0]
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"ONNX export differs from PyTorch by {diff:.2e} (> {atol:.0e}); not exported")
    tmp.replace(path)
    return diff
