"""Run a model bundle with ONNX Runtime: preprocessing from the bundle, calibrated probabilities out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from care_companion.errors import ModelError
from care_companion.imaging.preprocess import to_model_input
from care_companion.models.bundle import ONNX_FILE, BundleMeta, load_meta


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class BundlePredictor:
    """An ONNX Runtime session for one bundle; CUDA/TensorRT providers are used when present."""

    def __init__(self, directory: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.meta: BundleMeta = load_meta(self.directory)
        onnx_path = self.directory / ONNX_FILE
        if not onnx_path.is_file():
            raise ModelError(f"{self.directory}: bundle has no {ONNX_FILE}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in preferred if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)

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
        return softmax(self.logits(self.preprocess(images)), self.meta.temperature)
