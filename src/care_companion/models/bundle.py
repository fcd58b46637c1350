"""The model bundle: the one unit that moves between training, evaluation, the registry and serving.

A bundle is a directory holding ``model.onnx`` and ``bundle.json`` (this schema). Everything a consumer
needs to preprocess inputs and interpret outputs travels in it, so training and serving cannot disagree.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from care_companion.errors import ModelError
from care_companion.models.heatmap import MapCentres
from care_companion.models.ood import OodGate
from care_companion.tasks import TASKS, TaskSpec

BUNDLE_FILE = "bundle.json"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CHECKPOINT_FILE = "model.pt"
IMAGE_INPUT = "image"
IMAGES_INPUT = "images"
PRESENT_INPUT = "present"
LOGITS_OUTPUT = "logits"
EMBEDDING_OUTPUT = "embedding"
VIEW_EMBEDDINGS_OUTPUT = "view_embeddings"  # multi-view models: each view's pooled backbone features [N, V, F]
CLASS_MAPS_OUTPUT = "class_maps"  # each class's activation map before ReLU: [N, C, h, w], or [N, V, C, h, w]
PROFILE_FILE = "reference_profile.npz"
INTENDED_USE = (
    "Decision support for radiologists. Outputs are calibrated probabilities and an operating-point "
    "decision chosen for high sensitivity; they are not a diagnosis and must be reviewed."
)


class Normalisation(BaseModel):
    """Pixel normalisation applied after scaling 8-bit values to [0, 1]: ``(x - mean) / std``."""

    mean: float = 0.5
    std: float = 0.25


class TensorSpec(BaseModel):
    """Contract of one model input or output (MONAI-style metadata)."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"
    description: str = ""


class Int8Report(BaseModel):
    """The statically quantised INT8 model of a bundle and how it compares with float32."""

    file: str = INT8_FILE
    calibration_images: int = Field(description="Validation images the activation scales were calibrated on.")
    temperature: float = Field(default=1.0, description="Temperature fitted to the INT8 model's validation logits.")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="The INT8 model's own operating point, chosen on validation."
    )
    validation: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="'fp32' and 'int8' metrics on the validation split."
    )
    test: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="'fp32' and 'int8' metrics on the test split."
    )
    preferred: bool = Field(
        description="True when, each model at its own operating point, no sensitivity fell below float32's on "
        "validation or test: then 'auto' precision serves INT8."
    )
    reason: str = ""


class BundleMeta(BaseModel):
    """Metadata of a model bundle (``bundle.json``); the task definition it was trained for travels whole in
    ``spec`` (bundles written before it, with the task's fields copied flat, are read as well)."""

    schema_version: int = 2
    spec: TaskSpec = Field(description="The task definition the model was trained for.")
    backbone: str
    output_stride: int = Field(
        default=32, description="The backbone's output stride (16 or 8: dilated last stages, finer heat maps)."
    )
    map_centres: MapCentres | None = Field(
        default=None,
        description="Where the heat maps' cells are centred on the input, measured on the trained model; None: an "
        "even split (bundles made before it, and models without heat maps).",
    )
    input_size: int = Field(description="Square input side in pixels; images are resized to it.")
    in_chans: int = 1
    normalisation: Normalisation = Field(default_factory=Normalisation)
    temperature: float = Field(default=1.0, description="Logits are divided by it before the softmax.")
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Operating points on calibrated probabilities: 'abnormal' (sum of disease classes) "
        "and one per disease class; a probability reaching its threshold counts as positive.",
    )
    target_sensitivity: float = 0.95
    dataset_version: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict, description="Summary of the test evaluation.")
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    int8: Int8Report | None = Field(default=None, description="The INT8 model, when one was made.")
    ood: OodGate | None = Field(
        default=None,
        description="The out-of-distribution gate on the embedding (file ood.npz), applied before any finding; "
        "None for bundles made before it (they are served with the reject class alone).",
    )
    demo: bool = Field(default=False, description="True for demo models trained on synthetic data.")
    intended_use: str = INTENDED_USE
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    git_commit: str | None = None
    run_id: str | None = None
    training: dict[str, Any] = Field(default_factory=dict, description="Resolved training arguments.")

    @model_validator(mode="before")
    @classmethod
    def _flat_task_fields(cls, data: Any) -> Any:
        """Read schema 1 (task fields copied flat: task, classes, negative, positives, reject, views)."""
        if not isinstance(data, dict) or "spec" in data or "task" not in data:
            return data
        data = dict(data)
        flat = {key: data.pop(key) for key in _FLAT_FIELDS if key in data}
        name = flat.pop("task")
        known = TASKS.get(name)
        base = known.model_dump() if known is not None else {"name": name}
        data["spec"] = {**base, "name": name, **flat}
        return data

    @property
    def task(self) -> str:
        """The task's name."""
        return self.spec.name

    @property
    def classes(self) -> list[str]:
        """The model's output classes, in logit order."""
        return self.spec.classes

    @property
    def negative(self) -> str:
        """The normal class."""
        return self.spec.negative

    @property
    def positives(self) -> list[str]:
        """The disease classes."""
        return self.spec.positives

    @property
    def reject(self) -> str | None:
        """The 'not an image of this task' class, if the model has one."""
        return self.spec.reject

    @property
    def views(self) -> list[str]:
        """The views the model reads, in input order."""
        return self.spec.views

    @property
    def multiview(self) -> bool:
        """True for a model taking a study of several views (inputs "images" and "present")."""
        return self.spec.multiview

    def task_spec(self) -> TaskSpec:
        """The task definition the bundle was trained for."""
        return self.spec

    @classmethod
    def for_task(cls, task: TaskSpec, **kwargs: Any) -> BundleMeta:
        """Metadata pre-filled from a task definition."""
        size = kwargs["input_size"]
        return cls(
            spec=task,
            inputs=input_specs(task.views, size),
            outputs=[
                TensorSpec(name=LOGITS_OUTPUT, shape=["batch", len(task.classes)], description="uncalibrated"),
                TensorSpec(
                    name=EMBEDDING_OUTPUT,
                    shape=["batch", "features"],
                    description="penultimate-layer embedding (drift monitoring)",
                ),
                *(
                    [
                        TensorSpec(
                            name=VIEW_EMBEDDINGS_OUTPUT,
                            shape=["batch", len(task.views), "features"],
                            description="each view's pooled backbone features, in view order, zero-padded to the "
                            "widest (the out-of-distribution gate)",
                        )
                    ]
                    if task.multiview
                    else []
                ),
            ],
            **kwargs,
        )


_FLAT_FIELDS = ("task", "classes", "negative", "positives", "reject", "views")


def input_specs(views: list[str], size: int) -> list[TensorSpec]:
    """The model inputs for a task's views: one image for a single view, else a study of views plus a mask."""
    if len(views) == 1:
        return [TensorSpec(name=IMAGE_INPUT, shape=["batch", 1, size, size], description="normalised grayscale")]
    count = len(views)
    return [
        TensorSpec(
            name=IMAGES_INPUT,
            shape=["batch", count, 1, size, size],
            description=f"normalised grayscale views in the order {', '.join(views)}; zeros where a view is missing",
        ),
        TensorSpec(name=PRESENT_INPUT, shape=["batch", count], description="1 where the view was given, else 0"),
    ]


def save_meta(directory: Path, meta: BundleMeta) -> Path:
    """Write ``bundle.json`` atomically into a bundle directory."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / BUNDLE_FILE
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta.model_dump(mode="json"), indent=2))
    tmp.replace(target)
    return target


def load_meta(directory: Path) -> BundleMeta:
    """Read and validate ``bundle.json`` of a bundle directory."""
    path = Path(directory) / BUNDLE_FILE
    if not path.is_file():
        raise ModelError(f"{directory}: not a model bundle (no {BUNDLE_FILE})")
    try:
        return BundleMeta.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ModelError(f"{path}: invalid bundle metadata: {exc}") from exc
