"""The task registry: every clinical task is defined once here (or registered by a plug-in) and everything per
task derives from it: records, settings, routes, metrics, the CLI, bundles and monitoring.

A :class:`TaskSpec` names the task's classes, its disease classes, its reject class, its views (and so whether
it reads multi-view studies), its body part (and so the error code that refuses other images), its DICOM
routing values, its importers and fetcher (dotted paths, resolved lazily so this module depends on nothing but
config), its default training recipe and its serving settings.

Tasks outside the package register through the ``care_companion.tasks`` entry-point group (each entry a
:class:`TaskSpec` or a callable returning one) or through modules named in ``CARE_TASK_MODULES`` that call
:func:`register_task` when imported.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "care_companion.tasks"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class Recipe(BaseModel):
    """Default training recipe of a task; every field can be overridden on the command line."""

    backbone: str = "resnet18"
    image_size: int = 192
    batch_size: int = 32
    head_epochs: int = 1
    head_lr: float = 1e-3
    finetune_epochs: int = 10
    finetune_lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    patience: int = 4
    samples_per_epoch: int | None = 3500
    max_train_per_class: int | None = None
    output_stride: Literal[8, 16, 32] = Field(
        default=32,
        description="Downsampling of the backbone's last feature map (ResNet-family backbones): 16 dilates its last "
        "stage, doubling the heat maps' resolution for about the cost of that stage again; 8 dilates the last two.",
    )


class ServingSpec(BaseModel):
    """How the service takes a task's uploads and words its answers."""

    upload_help: str = Field(
        default="A radiograph of the task's body part: PNG, JPEG or DICOM.",
        description="What each uploaded view should be (the API reference shows it).",
    )
    batch: bool = Field(default=True, description="Offer POST /v1/predict/{task}/batch (one-view tasks only).")
    missing_view_note: str = Field(
        default="a finding can show in one view only",
        description="Why a study with a missing view is low-confidence (said after naming the missing view).",
    )
    legacy_paths: list[str] = Field(
        default_factory=list, description="Older paths kept as deprecated aliases of POST /v1/predict/{task}."
    )


SNOMED_CT = "http://snomed.info/sct"


class ClinicalCode(BaseModel):
    """A code of a clinical terminology (what FHIR calls a Coding and DICOM a code sequence item)."""

    system: str = Field(default=SNOMED_CT, description="The terminology's URI (SNOMED CT by default).")
    code: str
    display: str


class TaskSpec(BaseModel):
    """A clinical task: its classes, disease (positive) classes, reject class, views, body part and recipe."""

    name: str
    title: str = Field(default="", description="Human name, e.g. 'Chest X-ray'.")
    classes: list[str]
    negative: str = Field(description="The normal class.")
    positives: list[str] = Field(description="Disease classes: sensitivity is measured and gated on these.")
    reject: str | None = Field(default=None, description="Class meaning 'not an image of this task'.")
    views: list[str] = Field(default_factory=lambda: ["frontal"])
    body_part: str = Field(default="", description="Body part the task reads (default: the task name).")
    refusal_code: str = Field(
        default="",
        description="Error code of a refused image (default: not_a_<body_part>_radiograph).",
    )
    dicom_body_parts: list[str] = Field(
        default_factory=list, description="DICOM BodyPartExamined values routed to this task."
    )
    dicom_views: dict[str, list[str]] = Field(
        default_factory=dict,
        description="For each view, the DICOM ViewPosition values that are that view (a one-view task takes any).",
    )
    importers: dict[str, str] = Field(
        default_factory=dict, description="Importer name -> 'module:function' building a data-set version."
    )
    fetcher: str | None = Field(default=None, description="'module:function' downloading the public data set.")
    recipe: Recipe = Field(default_factory=Recipe)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    procedure: ClinicalCode | None = Field(
        default=None, description="The imaging procedure the task reads (DICOM SR 'procedure reported')."
    )
    codes: dict[str, ClinicalCode] = Field(
        default_factory=dict,
        description="Terminology codes of the classes, for results sent to hospital systems (FHIR); a class "
        "without one is sent as text only.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"task name {name!r}: use 1-32 lower-case letters, digits or '_', starting with a letter")
        return name

    def model_post_init(self, __context: Any) -> None:
        if not self.body_part:
            self.body_part = self.name
        if not self.refusal_code:
            self.refusal_code = f"not_a_{self.body_part}_radiograph"
        if not self.title:
            self.title = f"{self.body_part.capitalize()} radiograph"
        named = [self.negative, *self.positives, *([self.reject] if self.reject else [])]
        missing = [c for c in named if c not in self.classes]
        missing += [c for c in self.codes if c not in self.classes]
        missing += [f"view {v}" for v in self.dicom_views if v not in self.views]
        if missing:
            raise ValueError(f"task {self.name!r}: {', '.join(missing)} not among its classes {self.classes}")
        if len(set(self.views)) != len(self.views) or not self.views:
            raise ValueError(f"task {self.name!r}: views must be distinct and at least one")

    def index(self, name: str) -> int:
        """Index of a class name."""
        return self.classes.index(name)

    @property
    def multiview(self) -> bool:
        """True for a task whose model reads a study of several views (one upload field per view)."""
        return len(self.views) > 1

    @property
    def upload_fields(self) -> list[str]:
        """The multipart file fields of a prediction: one per view, or ``file`` for a one-view task."""
        return list(self.views) if self.multiview else ["file"]

    @property
    def positive_indices(self) -> list[int]:
        """Indices of the disease classes."""
        return [self.index(c) for c in self.positives]

    @property
    def clinical_classes(self) -> list[str]:
        """Classes that describe a radiograph of this task (everything but the reject class)."""
        return [c for c in self.classes if c != self.reject]

    @property
    def model_setting(self) -> str:
        """The environment variable naming the model this task serves."""
        return f"CARE_MODELS__{self.name}"

    def importer(self, name: str | None = None) -> Callable[..., Any]:
        """The task's importer (its first one by default), imported on first use.

        Raises:
            ConfigError: the task has no importer of that name.
        """
        from care_companion.errors import ConfigError

        if not self.importers:
            raise ConfigError(f"task {self.name!r} has no importer")
        key = name or next(iter(self.importers))
        if key not in self.importers:
            raise ConfigError(f"task {self.name!r} has no importer {key!r}; it has {', '.join(self.importers)}")
        return resolve(self.importers[key])


def resolve(path: str) -> Any:
    """The object a ``'module:attribute'`` path names."""
    module, _, attribute = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in attribute.split(".") if attribute else []:
        target = getattr(target, part)
    return target


CHEST = TaskSpec(
    name="chest",
    title="Chest X-ray",
    classes=["normal", "pneumonia", "tuberculosis", "unknown"],
    negative="normal",
    positives=["pneumonia", "tuberculosis"],
    reject="unknown",
    views=["frontal"],
    body_part="chest",
    refusal_code="not_a_chest_xray",
    dicom_body_parts=["CHEST"],
    importers={"folders": "care_companion.data.chest:import_chest"},
    fetcher="care_companion.data.chest:fetch_chest",
    recipe=Recipe(),
    serving=ServingSpec(upload_help="A frontal chest radiograph: PNG, JPEG or DICOM.", legacy_paths=["/predict_chest"]),
    procedure=ClinicalCode(code="399208008", display="Plain X-ray of chest (procedure)"),
    codes={
        "normal": ClinicalCode(code="17621005", display="Normal (qualifier value)"),
        "pneumonia": ClinicalCode(code="233604007", display="Pneumonia (disorder)"),
        "tuberculosis": ClinicalCode(code="56717001", display="Tuberculosis (disorder)"),
    },
)

WRIST = TaskSpec(
    name="wrist",
    title="Wrist study (PA + lateral)",
    classes=["normal", "fracture", "unknown"],
    negative="normal",
    positives=["fracture"],
    reject="unknown",
    views=["pa", "lateral"],
    body_part="wrist",
    dicom_body_parts=["WRIST", "HAND"],
    dicom_views={"pa": ["PA", "AP"], "lateral": ["LL", "RL", "LAT", "LATERAL"]},
    importers={
        "grazpedwri": "care_companion.data.wrist:import_wrist",
        "fracatlas": "care_companion.data.wrist:import_fracatlas",
    },
    fetcher="care_companion.data.wrist:fetch_wrist",
    recipe=Recipe(image_size=160, batch_size=16, samples_per_epoch=2000, finetune_epochs=8),
    serving=ServingSpec(
        upload_help="A wrist radiograph of this view: PNG, JPEG or DICOM.",
        batch=False,
        missing_view_note="a fracture can show in one view only",
        legacy_paths=["/predict_wrist"],
    ),
    procedure=ClinicalCode(code="39714003", display="Skeletal X-ray of wrist and hand (procedure)"),
    codes={
        "normal": ClinicalCode(code="17621005", display="Normal (qualifier value)"),
        "fracture": ClinicalCode(code="125605004", display="Fracture of bone (disorder)"),
    },
)

TASKS: dict[str, TaskSpec] = {}
_plugins_loaded: set[str] = set()


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add a task to the registry; a different task under a registered name needs ``replace=True``.

    Raises:
        ConfigError: another task is registered under that name.
    """
    from care_companion.errors import ConfigError

    known = TASKS.get(spec.name)
    if known is not None and known != spec and not replace:
        raise ConfigError(f"a different task {spec.name!r} is registered already")
    TASKS[spec.name] = spec
    return spec


def unregister_task(name: str) -> None:
    """Remove a task (tests and plug-ins that replace one); the built-in tasks stay."""
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in task")
    TASKS.pop(name, None)


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Register the tasks of installed entry points and of ``modules`` (imported once each)."""
    if "entry_points" not in _plugins_loaded:
        _plugins_loaded.add("entry_points")
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                found = entry.load()
                spec = found() if callable(found) and not isinstance(found, TaskSpec) else found
                register_task(spec)
            except Exception as exc:  # a broken plug-in must not take the built-in tasks down
                log.error("task plug-in %s could not be loaded: %s", entry.name, exc)
    for module in modules:
        if module not in _plugins_loaded:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                from care_companion.errors import ConfigError

                raise ConfigError(f"CARE_TASK_MODULES: cannot import task module {module!r}: {exc}") from exc
            _plugins_loaded.add(module)


def configured_modules() -> list[str]:
    """Plug-in modules named in ``CARE_TASK_MODULES``."""
    from care_companion.config import get_settings

    return list(get_settings().task_modules)


def ensure_plugins() -> None:
    """Load the plug-in tasks the environment names (entry points, ``CARE_TASK_MODULES``)."""
    load_plugins(configured_modules())


def task_names() -> list[str]:
    """Names of every registered task, built-in first, plug-ins loaded."""
    ensure_plugins()
    return list(TASKS)


def all_tasks() -> list[TaskSpec]:
    """Every registered task, plug-ins loaded."""
    ensure_plugins()
    return list(TASKS.values())


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, with a clear error listing the known ones.

    Raises:
        ConfigError: no task of that name is registered.
    """
    from care_companion.errors import ConfigError

    if name not in TASKS:
        ensure_plugins()
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


BUILTIN = (CHEST.name, WRIST.name)
register_task(CHEST)
register_task(WRIST)
