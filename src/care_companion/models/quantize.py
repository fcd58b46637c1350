"""Static INT8 quantisation of an exported model, calibrated on real (validation) inputs.

Activations are unsigned 8-bit and weights signed 8-bit per output channel in the QDQ format, which ONNX
Runtime's x86 kernels (VNNI/AMX) run fastest; see ``onnxruntime.quantization.quantize_static``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from care_companion.errors import ModelError


class _Batches:
    """Feeds calibration inputs to ONNX Runtime's calibrator in small batches."""

    def __init__(self, inputs: np.ndarray, batch_size: int, input_name: str) -> None:
        self._chunks = [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
        self._input_name = input_name
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._chunks):
            return None
        chunk = self._chunks[self._next]
        self._next += 1
        return {self._input_name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self) -> None:
        self._next = 0


def quantize_int8(
    source: Path, target: Path, calibration: np.ndarray, *, per_channel: bool = True, batch_size: int = 16
) -> Path:
    """Write a statically quantised INT8 copy of the ONNX model ``source`` to ``target``.

    Args:
        source: the float32 ONNX model (input "image").
        target: where the INT8 model goes (written atomically).
        calibration: preprocessed model inputs [N, 1, S, S] whose activation ranges set the scales;
            use validation images, never test images.
        per_channel: one weight scale per output channel (more accurate for ResNet-style convolutions).
        batch_size: calibration batch size.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ModelError("INT8 quantisation needs calibration images; none were given")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quantize-") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        tmp = target.with_suffix(".tmp.onnx")
        quantize_static(
            str(prepared),
            str(tmp),
            _Batches(calibration, batch_size, "image"),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        tmp.replace(target)
    return target
