"""The reference profile a model carries: what its inputs looked like when it was trained and validated.

Drift monitoring compares recent inputs with it. It holds per-image features of a sample of training images, a
PCA of the model's penultimate-layer embeddings (fitted on training images) with the validation studies'
projected embeddings, and the model's behaviour on validation: the decided class mix, the confidence of each
decision and the share of inputs rejected as not being an image of the task. Embeddings of training images are
only used to fit the PCA: a model's embeddings of images it was trained on are tighter than of any new image,
so comparing new inputs with them would raise false alarms.

Stored as one ``.npz`` (no pickles) next to the ONNX model in the bundle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from care_companion.errors import ModelError
from care_companion.models.bundle import PROFILE_FILE

PROFILE_VERSION = 1


@dataclass
class ReferenceProfile:
    """A model's reference for drift monitoring (see the module docstring)."""

    task: str
    classes: list[str]
    feature_names: list[str]
    features: np.ndarray  # [N, F] per-image features of training images
    histogram: np.ndarray  # [B] mean intensity histogram of the same images (the KL baseline)
    pca_mean: np.ndarray  # [D]
    pca_components: np.ndarray  # [K, D], rows orthonormal
    pca_explained: np.ndarray  # [K] share of training-embedding variance per component
    embeddings: dict[str, np.ndarray]  # precision ("fp32", "int8") -> [M, K] projected validation embeddings
    class_mix: np.ndarray  # [C] share of validation items decided as each class (reject class included)
    confidences: np.ndarray  # [M'] calibrated probability of the decided class, validation items not rejected
    rejection_rate: float  # share of validation items decided as the reject class (0 without one)
    counts: dict[str, int] = field(default_factory=dict)  # images/items each part was computed on

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings [N, D] in the profile's PCA coordinates [N, K]."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.pca_mean.shape[0]:
            raise ModelError(
                f"embeddings of shape {embeddings.shape} do not match the profile's width {self.pca_mean.shape[0]}"
            )
        return pca_project(embeddings, self.pca_mean, self.pca_components)

    def reference_embeddings(self, precision: str) -> np.ndarray:
        """The projected validation embeddings of the model file run at ``precision`` (float32 as fallback)."""
        return self.embeddings.get(precision, self.embeddings["fp32"])

    def save(self, path: Path) -> Path:
        """Write the profile atomically as ``.npz``."""
        meta = {
            "version": PROFILE_VERSION,
            "task": self.task,
            "classes": self.classes,
            "feature_names": self.feature_names,
            "rejection_rate": self.rejection_rate,
            "counts": self.counts,
            "precisions": sorted(self.embeddings),
        }
        arrays = {
            "features": self.features,
            "histogram": self.histogram,
            "pca_mean": self.pca_mean,
            "pca_components": self.pca_components,
            "pca_explained": self.pca_explained,
            "class_mix": self.class_mix,
            "confidences": self.confidences,
            **{f"embeddings_{name}": value for name, value in self.embeddings.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as handle:
            np.savez_compressed(handle, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> ReferenceProfile:
        """Read a profile written by :meth:`save`.

        Raises:
            ModelError: the file is missing, unreadable or of another version.
        """
        if not Path(path).is_file():
            raise ModelError(f"{path}: no reference profile")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: np.array(data[name]) for name in data.files if name != "meta"}
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{path}: unreadable reference profile: {exc}") from exc
        if meta.get("version") != PROFILE_VERSION:
            raise ModelError(f"{path}: reference profile version {meta.get('version')}, expected {PROFILE_VERSION}")
        return cls(
            task=meta["task"],
            classes=list(meta["classes"]),
            feature_names=list(meta["feature_names"]),
            features=arrays["features"],
            histogram=arrays["histogram"],
            pca_mean=arrays["pca_mean"],
            pca_components=arrays["pca_components"],
            pca_explained=arrays["pca_explained"],
            embeddings={name: arrays[f"embeddings_{name}"] for name in meta["precisions"]},
            class_mix=arrays["class_mix"],
            confidences=arrays["confidences"],
            rejection_rate=float(meta["rejection_rate"]),
            counts={k: int(v) for k, v in meta["counts"].items()},
        )


def load_bundle_profile(bundle_dir: Path) -> ReferenceProfile:
    """The reference profile in a bundle folder.

    Raises:
        ModelError: the bundle has none (the message gives the command that makes one), or it is unreadable.
    """
    path = Path(bundle_dir) / PROFILE_FILE
    if not path.is_file():
        raise ModelError(
            f"{bundle_dir}: the model has no reference profile ({PROFILE_FILE}); "
            f"compute it with `care-companion drift profile {bundle_dir}`"
        )
    return ReferenceProfile.load(path)


def fit_pca(embeddings: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean [D], the top ``components`` principal directions [K, D] and their explained-variance shares [K].

    ``K`` is at most ``components``, the embedding width and the number of rows minus one.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"PCA needs at least two embeddings [N, D]; got shape {x.shape}")
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = max(1, min(components, vt.shape[0], len(x) - 1))
    variance = singular**2
    total = variance.sum()
    explained = variance[:k] / total if total > 0 else np.zeros(k)
    return mean, vt[:k], explained


def pca_project(embeddings: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Embeddings [N, D] in the coordinates of a PCA (mean [D], components [K, D]): [N, K]."""
    return (np.asarray(embeddings, dtype=np.float64) - mean) @ components.T


def decided_confidences(probs: np.ndarray, decided: np.ndarray) -> np.ndarray:
    """The calibrated probability of each item's decided class."""
    return np.asarray(probs)[np.arange(len(decided)), np.asarray(decided)]
