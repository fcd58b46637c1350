"""Static INT8 quantisation of an exported model, calibrated on real (validation) inputs.

Activations are unsigned 8-bit and weights signed 8-bit per output channel in the QDQ format, which ONNX
Runtime's x86 kernels (VNNI/AMX) run fastest; see ``onnxruntime.quantization.quantize_static``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from care_companion.errors import ModelError
from care_companion.models.bundle import CLASS_MAPS_OUTPUT


class _Batches:
    """Feeds calibration inputs to ONNX Runtime's calibrator in small batches."""

    def __init__(self, feed: Mapping[str, np.ndarray], batch_size: int) -> None:
        count = len(next(iter(feed.values())))
        self._chunks = [
            {name: np.ascontiguousarray(value[i : i + batch_size], dtype=np.float32) for name, value in feed.items()}
            for i in range(0, count, batch_size)
        ]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._chunks):
            return None
        chunk = self._chunks[self._next]
        self._next += 1
        return chunk

    def rewind(self) -> None:
        self._next = 0


def calibration_feed(source: Path, calibration: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The calibration inputs by the model's input names (a bare array only for a one-input model)."""
    import onnx

    names = [i.name for i in onnx.load(str(source), load_external_data=False).graph.input]
    if isinstance(calibration, np.ndarray):
        if len(names) != 1:
            raise ModelError(f"{source.name} takes inputs {', '.join(names)}: calibrate it with a feed dict")
        calibration = {names[0]: calibration}
    if set(calibration) != set(names):
        raise ModelError(f"calibration has inputs {', '.join(sorted(calibration))}; the model takes {', '.join(names)}")
    if len(next(iter(calibration.values()))) == 0:
        raise ModelError("INT8 quantisation needs calibration images; none were given")
    return dict(calibration)


def only_feeding(model_path: Path, output: str) -> list[str]:
    """Names of the nodes of an ONNX model that compute ``output`` and no other output: the heat maps' arithmetic
    stays float32 (its matrix products of weights with per-study gradients do not quantise per channel, and
    maps cost little next to the backbone)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    producer = {name: node for node in graph.node for name in node.output}

    def ancestors(names: list[str]) -> set[str]:
        seen: set[str] = set()
        stack = [producer[n] for n in names if n in producer]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            stack += [producer[i] for i in node.input if i in producer]
        return seen

    others = [o.name for o in graph.output if o.name != output]
    if output not in {o.name for o in graph.output}:
        return []
    return sorted(ancestors([output]) - ancestors(others))


def quantize_int8(
    source: Path,
    target: Path,
    calibration: np.ndarray | Mapping[str, np.ndarray],
    *,
    per_channel: bool = True,
    batch_size: int = 16,
) -> Path:
    """Write a statically quantised INT8 copy of the ONNX model ``source`` to ``target``.

    Args:
        source: the float32 ONNX model.
        target: where the INT8 model goes (written atomically).
        calibration: preprocessed model inputs whose activation ranges set the scales: the image batch
            [N, 1, S, S] of a single-view model, or a feed by input name (``BundlePredictor.preprocess_studies``
            of a multi-view model, which should include studies with a missing view); use validation
            images, never test images.
        per_channel: one weight scale per output channel (more accurate for ResNet-style convolutions).
        batch_size: calibration batch size.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feed = calibration_feed(source, calibration)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quantize-") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        tmp = target.with_suffix(".tmp.onnx")
        quantize_static(
            str(prepared),
            str(tmp),
            _Batches(feed, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=only_feeding(prepared, CLASS_MAPS_OUTPUT),
        )
        tmp.replace(target)
    return target
