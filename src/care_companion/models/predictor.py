"""Run a model bundle with ONNX Runtime: preprocessing from the bundle, calibrated probabilities out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np

from care_companion.errors import ModelError
from care_companion.imaging.preprocess import to_model_input
from care_companion.models.bundle import (
    CLASS_MAPS_OUTPUT,
    EMBEDDING_OUTPUT,
    IMAGE_INPUT,
    IMAGES_INPUT,
    INT8_FILE,
    LOGITS_OUTPUT,
    ONNX_FILE,
    PRESENT_INPUT,
    VIEW_EMBEDDINGS_OUTPUT,
    BundleMeta,
    load_meta,
)

Feed = dict[str, np.ndarray]


def present_mask(batch: np.ndarray | Feed) -> np.ndarray | None:
    """The views given per item [N, V] of a multi-view feed (or of one item's feed without batch axis: [V]);
    None for one-view input, where the one view is always given."""
    if isinstance(batch, Mapping) and PRESENT_INPUT in batch:
        return np.asarray(batch[PRESENT_INPUT])
    return None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def preprocess_images(meta: BundleMeta, images: list[np.ndarray]) -> np.ndarray:
    """uint8 grayscale images to a bundle's normalised input batch [N, 1, S, S] (one image per item)."""
    norm = meta.normalisation
    return to_model_input(images, meta.input_size, norm.mean, norm.std)


def study_feed(meta: BundleMeta, studies: Sequence[Mapping[str, np.ndarray | None]]) -> Feed:
    """Studies (view name → uint8 grayscale image, or None when missing) to a bundle's input feed.

    A multi-view bundle gets "images" [N, V, 1, S, S] (zeros for missing views) and "present" [N, V];
    a single-view bundle gets "image" [N, 1, S, S].

    Raises:
        ModelError: a view name the bundle does not know, or a study without any image.
    """
    views = meta.views
    size = meta.input_size
    present = np.zeros((len(studies), len(views)), dtype=np.float32)
    given: list[np.ndarray] = []
    for i, study in enumerate(studies):
        unknown = sorted(set(study) - set(views))
        if unknown:
            raise ModelError(f"unknown view {unknown[0]!r}; the {meta.task} model takes {', '.join(views)}")
        for j, view in enumerate(views):
            if study.get(view) is not None:
                present[i, j] = 1.0
                given.append(cast(np.ndarray, study[view]))
        if not present[i].any():
            raise ModelError(f"study {i} has no image; give at least one of {', '.join(views)}")
    images = np.zeros((len(studies), len(views), 1, size, size), dtype=np.float32)
    if given:
        images[present > 0] = preprocess_images(meta, given)
    if not meta.multiview:
        return {IMAGE_INPUT: images[:, 0]}
    return {IMAGES_INPUT: images, PRESENT_INPUT: present}


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
        self.input_names: tuple[str, ...] = tuple(i.name for i in self.session.get_inputs())
        outputs = {o.name for o in self.session.get_outputs()}
        self.has_embedding = EMBEDDING_OUTPUT in outputs  # bundles exported before drift monitoring lack it
        self.has_view_embeddings = VIEW_EMBEDDINGS_OUTPUT in outputs  # multi-view bundles since the per-view gate
        self.has_class_maps = CLASS_MAPS_OUTPUT in outputs  # bundles since heat maps, with a mean-pooling backbone

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
        """uint8 grayscale images to the model's normalised input batch [N, 1, S, S] (one image per item)."""
        return preprocess_images(self.meta, images)

    def preprocess_studies(self, studies: Sequence[Mapping[str, np.ndarray | None]]) -> Feed:
        """Studies (view name → uint8 grayscale image, or None when missing) to the model's input feed
        (:func:`study_feed`, its one-view input named as this model's)."""
        feed = study_feed(self.meta, studies)
        return feed if self.meta.multiview else {self.input_names[0]: feed[IMAGE_INPUT]}

    def logits(self, batch: np.ndarray | Feed, *, chunk: int = 64) -> np.ndarray:
        """Raw logits for a preprocessed input feed, or for a single-view bundle's image batch [N, 1, S, S]."""
        return self._run(batch, [LOGITS_OUTPUT], chunk)[0]

    def logits_and_embeddings(self, batch: np.ndarray | Feed, *, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits [N, C] and penultimate-layer embeddings [N, D] in one engine call per chunk.

        Raises:
            ModelError: the bundle's ONNX model has no embedding output (exported before drift monitoring).
        """
        if not self.has_embedding:
            raise ModelError(f"{self.directory}: the model has no {EMBEDDING_OUTPUT!r} output; re-export it")
        logits, embeddings = self._run(batch, [LOGITS_OUTPUT, EMBEDDING_OUTPUT], chunk)
        return logits, embeddings

    def engine_outputs(self, batch: np.ndarray | Feed, *, chunk: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw logits [N, C], penultimate-layer embeddings [N, D] and the view features the out-of-distribution
        gate scores (each view's pooled backbone features [N, V, F]; for a model without that output, one-view
        models included, the embeddings [N, D] themselves), in one engine call per chunk."""
        logits, embeddings, views = self._gate_outputs(batch, chunk, maps=False)
        return logits, embeddings, views

    def served_outputs(self, batch: np.ndarray | Feed, *, chunk: int = 64) -> tuple[np.ndarray, ...]:
        """What the service reads of a batch, in one engine call per chunk: :meth:`engine_outputs` and, for a
        model that has them, the class maps (see :meth:`class_maps`)."""
        return self._gate_outputs(batch, chunk, maps=self.has_class_maps)

    def _gate_outputs(self, batch: np.ndarray | Feed, chunk: int, *, maps: bool) -> tuple[np.ndarray, ...]:
        """Logits, embeddings, view features (the embeddings for a model without them) and, with ``maps``, the
        class maps."""
        if not self.has_embedding:
            raise ModelError(f"{self.directory}: the model has no {EMBEDDING_OUTPUT!r} output; re-export it")
        names = [LOGITS_OUTPUT, EMBEDDING_OUTPUT, *[VIEW_EMBEDDINGS_OUTPUT] * self.has_view_embeddings]
        outputs = self._run(batch, [*names, *[CLASS_MAPS_OUTPUT] * maps], chunk)
        views = outputs[2] if self.has_view_embeddings else outputs[1]
        return (outputs[0], outputs[1], views, *outputs[len(names) :])

    def class_maps(self, batch: np.ndarray | Feed, *, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits [N, C] and each class's activation map before ReLU ([N, C, h, w], or [N, V, C, h, w] for
        several views; :mod:`care_companion.models.heatmap` turns them into heat maps).

        Raises:
            ModelError: the model has no class maps (exported before heat maps, or its backbone does not pool by a
                mean, so its maps would not be Grad-CAM).
        """
        if not self.has_class_maps:
            raise ModelError(f"{self.directory}: the model has no {CLASS_MAPS_OUTPUT!r} output (no heat maps)")
        logits, maps = self._run(batch, [LOGITS_OUTPUT, CLASS_MAPS_OUTPUT], chunk)
        return logits, maps

    def _run(self, batch: np.ndarray | Feed, outputs: list[str], chunk: int) -> list[np.ndarray]:
        """The named outputs for a batch, run ``chunk`` items at a time."""
        feed = self._feed(batch)
        count = len(next(iter(feed.values())))
        parts = [
            self.session.run(outputs, {name: value[i : i + chunk] for name, value in feed.items()})
            for i in range(0, count, chunk)
        ]
        if not parts:
            widths = {o.name: o.shape[-1] for o in self.session.get_outputs()}
            return [np.zeros((0, w if isinstance(w := widths[name], int) else 0), np.float32) for name in outputs]
        return [np.concatenate([part[k] for part in parts]) for k in range(len(outputs))]

    def _feed(self, batch: np.ndarray | Feed) -> Feed:
        """A feed dict with exactly the model's inputs (a bare array only for a one-input model)."""
        if isinstance(batch, np.ndarray):
            if len(self.input_names) != 1:
                raise ModelError(f"this model takes inputs {', '.join(self.input_names)}: pass a feed dict")
            return {self.input_names[0]: batch}
        if set(batch) != set(self.input_names):
            raise ModelError(
                f"feed has inputs {', '.join(sorted(batch))}; the model takes {', '.join(self.input_names)}"
            )
        return dict(batch)

    def predict_proba(self, images: list[np.ndarray]) -> np.ndarray:
        """Calibrated class probabilities [N, C] for uint8 grayscale images (single-view bundles)."""
        if self.meta.multiview:
            raise ModelError(
                f"the {self.meta.task} model reads studies of {', '.join(self.meta.views)}: use predict_studies"
            )
        return softmax(self.logits(self.preprocess(images)), self.temperature)

    def predict_studies(self, studies: Sequence[Mapping[str, np.ndarray | None]]) -> np.ndarray:
        """Calibrated class probabilities [N, C] for studies (view name → uint8 grayscale image or None)."""
        return softmax(self.logits(self.preprocess_studies(studies)), self.temperature)
