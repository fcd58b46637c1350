"""Run a model bundle with ONNX Runtime: preprocessing from the bundle, calibrated probabilities out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from care_companion.errors import ModelError
from care_companion.imaging.preprocess import to_model_input
from care_companion.models.bundle import INT8_FILE, ONNX_FILE, BundleMeta, load_meta


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


PRECISIONS = ("auto", "fp32", "int8")


def model_file(directory: Path, meta: BundleMeta, precision: str = "auto") -> Path:
    """The ONNX file to run: float32, INT8, or (``auto``) INT8 only when the bundle says it lost no sensitivity."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    int8 = directory / (meta.int8.file if meta.int8 else INT8_FILE)
    if precision == "int8" or (precision == "auto" and meta.int8 is not None and meta.int8.preferred):
        if not int8.is_file():
            if precision == "auto":
                return directory / ONNX_FILE
            raise ModelError(f"{directory}: bundle has no INT8 model ({int8.name}); quantise it first")
        return int8
    return directory / ONNX_FILE


class BundlePredictor:
    """An ONNX Runtime session for one bundle; CUDA/TensorRT providers are used when present.

    Args:
        directory: the bundle folder.
        threads: ONNX Runtime intra-op threads (None: all cores).
        precision: "fp32", "int8", or "auto" (INT8 when the bundle records that it kept sensitivity).
        spin: let idle ONNX Runtime threads busy-wait for work (fastest alone; a service sharing its cores
            with decoding and HTTP turns it off so waiting threads do not take CPU from them).
    """

    def __init__(
        self, directory: Path, *, threads: int | None = None, precision: str = "fp32", spin: bool = True
    ) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.meta: BundleMeta = load_meta(self.directory)
        onnx_path = model_file(self.directory, self.meta, precision)
        self.precision = "int8" if onnx_path.name != ONNX_FILE else "fp32"
        if not onnx_path.is_file():
            raise ModelError(f"{self.directory}: bundle has no {onnx_path.name}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in preferred if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)

    @property
    def temperature(self) -> float:
        """Calibration temperature of the model file being run."""
        return self.meta.int8.temperature if self.precision == "int8" and self.meta.int8 else self.meta.temperature

    @property
    def thresholds(self) -> dict[str, float]:
        """Operating point of the model file being run (the INT8 model has its own, chosen on validation)."""
        if self.precision == "int8" and self.meta.int8 and self.meta.int8.thresholds:
            return dict(self.meta.int8.thresholds)
        return dict(self.meta.thresholds)

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 grayscale images to the model's normalised input batch."""
        norm = self.meta.normalisation
        return to_model_input(images, self.meta.input_size, norm.mean, norm.std)

    def logits(self, batch: np.ndarray, *, chunk: int = 64) -> np.ndarray:
        """Raw logits for a preprocessed batch."""
        parts = [self.session.run(["logits"], {"image": batch[i : i + chunk]})[0] for i in range(0, len(batch), chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.meta.classes)), dtype=np.float32)

    def predict_proba(self, images: list[np.ndarray]) -> np.ndarray:
        """Calibrated class probabilities [N, C] for uint8 grayscale images."""
        return softmax(self.logits(self.preprocess(images)), self.temperature)
