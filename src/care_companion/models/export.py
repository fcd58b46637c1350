"""ONNX export of trained classifiers, checked against PyTorch before it is trusted."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from care_companion.errors import ModelError

OPSET = 17


def export_onnx(model: torch.nn.Module, path: Path, *, input_size: int, atol: float = 1e-4, seed: int = 0) -> float:
    """Export ``model`` to ONNX with a dynamic batch axis and check it against PyTorch.

    Args:
        model: the classifier (put in eval mode here).
        path: the ``.onnx`` file to write.
        input_size: square input side.
        atol: largest allowed absolute logit difference between ONNX Runtime and PyTorch.
        seed: seed of the random check inputs.

    Returns:
        The largest absolute difference seen on the check batch.
    """
    import onnxruntime as ort

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, 1, input_size, input_size)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    check = torch.randn(5, 1, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(check).numpy()
    got = session.run(["logits"], {"image": check.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"ONNX export differs from PyTorch by {diff:.2e} (> {atol:.0e}); not exported")
    tmp.replace(path)
    return diff
