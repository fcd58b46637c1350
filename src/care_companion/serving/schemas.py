"""Pydantic schemas of the HTTP API (request bodies only HTTP uses, every response): the contract technicians'
tools and other systems read. The records' own schemas (patients, studies, users) are in
:mod:`care_companion.records.schemas`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from care_companion import REVIEW_WARNING
from care_companion.models.heatmap import MapCentres
from care_companion.records.schemas import ApiKeyPublic, FeedbackCreate, PatientBase, UserPublic
from care_companion.registry.models import ALIASES, VersionInfo
from care_companion.security import Role
from care_companion.tasks import TaskSpec


class ErrorBody(BaseModel):
    """Every error answer: a stable machine-readable code and a sentence for people."""

    error: str = Field(description="Stable error code, e.g. truncated, not_an_image, not_a_chest_xray.")
    detail: str = Field(description="What went wrong and what to do about it.")


def error_doc(description: str) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry: an :class:`ErrorBody` answer, and when it is given."""
    return {"model": ErrorBody, "description": description}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: error_doc("No, malformed, expired or unknown credentials."),
    403: error_doc("The caller's role lacks the permission this endpoint needs."),
}


class ModelRef(BaseModel):
    """Which model produced a result."""

    name: str
    version: str | None = Field(description="Registry version, or None for a model served from a folder.")
    alias: str | None = Field(default=None, description="Registry alias it was loaded by (production, staging).")
    demo: bool = Field(default=False, description="True for demo models trained on synthetic images.")


class Decision(BaseModel):
    """The operating-point decision: positive when the disease score reaches the stored threshold."""

    positive: bool = Field(description="True when the image is flagged abnormal (needs attention).")
    score: float = Field(description="P(abnormal): the sum of the calibrated disease probabilities.")
    threshold: float = Field(description="Threshold chosen on validation data for high sensitivity.")
    rule: str = Field(description="The rule in words.")


HEATMAP_PATH = "/v1/predictions/{prediction_id}/heatmap.png"


class ViewHeatmap(BaseModel):
    """One view's heat map: the map on the model's feature grid and the size of the film it covers."""

    grid: list[list[float]] = Field(
        description="The map, rows of the model's feature grid, 0 to 1 (1: what pushed most towards the answer), "
        "over the whole film (the model reads the film resized to a square); each cell centred where `centres` says."
    )
    centres: MapCentres | None = Field(
        default=None,
        description="Where each grid row and column is centred on the film, as fractions of its height and width "
        "(measured on the model); None: an even split.",
    )
    width: int = Field(description="The film's width in pixels (the PNG's).")
    height: int = Field(description="The film's height in pixels (the PNG's).")


class Heatmap(BaseModel):
    """Where on the film(s) the answer comes from: a class activation map (Grad-CAM) per view read."""

    shows: str = Field(description="What the map explains: the decided class, or P(abnormal) for a negative decision.")
    method: Literal["grad-cam"] = "grad-cam"
    views: dict[str, ViewHeatmap]
    url: str | None = Field(
        default=None,
        description="The stored prediction's heat map of its first view read, a see-through PNG at the film's "
        "size (each view's: .../heatmap/{view}.png); None when the result was not stored.",
    )


class PredictionResult(BaseModel):
    """One image's (or one study's) calibrated result; always to be reviewed by a radiologist."""

    request_id: str
    task: str
    label: str = Field(description="The decided class: the most probable disease when positive, else normal.")
    probabilities: dict[str, float] = Field(description="Calibrated probability of every class.")
    decision: Decision
    confidence: Literal["high", "low"]
    confidence_reasons: list[str] = Field(default_factory=list, description="Why confidence is low, if it is.")
    views_used: list[str] = Field(description="Which views of the study the model looked at.")
    review_required: Literal[True] = True
    warning: str = REVIEW_WARNING
    model: ModelRef
    latency_ms: float = Field(description="Server-side time from request to answer, in milliseconds.")
    study_id: int | None = Field(default=None, description="The study the result was stored with, if any.")
    image_id: int | None = Field(default=None, description="The stored image's record, for a study.")
    prediction_id: int | None = Field(default=None, description="The stored prediction's record, if kept.")
    heatmap: Heatmap | None = Field(
        default=None, description="Where the answer comes from, per view; None for a model exported without maps."
    )


class BatchItem(BaseModel):
    """One image of a batch request: a result or the error it got, in input order."""

    index: int
    filename: str | None = None
    ok: bool
    result: PredictionResult | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    """Results of a batch request, in input order."""

    request_id: str
    count: int
    succeeded: int
    items: list[BatchItem]
    review_required: Literal[True] = True
    warning: str = REVIEW_WARNING


class LoadedModelInfo(BaseModel):
    """A model the service has loaded."""

    task: str
    name: str
    version: str | None
    alias: str | None
    source: str
    classes: list[str]
    positives: list[str]
    reject: str | None
    thresholds: dict[str, float]
    temperature: float
    input_size: int
    precision: str = Field(description="Which model file runs: fp32 or int8.")
    backbone: str
    dataset_version: str
    demo: bool
    loaded_at: str
    metrics: dict[str, float] = Field(default_factory=dict, description="Test-split summary from the bundle.")


class ModelsResponse(BaseModel):
    """Loaded models, and why any task has none."""

    data: list[LoadedModelInfo]
    unavailable: dict[str, str] = Field(default_factory=dict, description="Task -> why no model is loaded.")


class ReloadResponse(BaseModel):
    """What a reload changed, per task."""

    changes: dict[str, str]
    models: list[LoadedModelInfo]


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "ready", "not_ready"]
    models: dict[str, str | None] = Field(default_factory=dict, description="Task -> loaded version (or folder).")
    detail: str | None = None


class TaskInfo(BaseModel):
    """A registered task as ``GET /v1/tasks`` shows it."""

    name: str
    title: str
    body_part: str
    classes: list[str]
    negative: str
    positives: list[str]
    reject: str | None
    views: list[str]
    multiview: bool
    upload_fields: list[str] = Field(description="The multipart file fields of POST /v1/predict/{task}.")
    refusal_code: str = Field(description="Error code of an image that is not of this task's body part (422).")
    batch: bool = Field(description="True when POST /v1/predict/{task}/batch exists.")

    @classmethod
    def from_spec(cls, spec: TaskSpec) -> TaskInfo:
        """The public view of a task definition."""
        return cls(
            name=spec.name,
            title=spec.title,
            body_part=spec.body_part,
            classes=list(spec.classes),
            negative=spec.negative,
            positives=list(spec.positives),
            reject=spec.reject,
            views=list(spec.views),
            multiview=spec.multiview,
            upload_fields=spec.upload_fields,
            refusal_code=spec.refusal_code,
            batch=spec.serving.batch and not spec.multiview,
        )


# -- signing in ----------------------------------------------------------------------------------------------


class Token(BaseModel):
    """An access token for ``Authorization: Bearer``."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")
    role: Role


# -- records -------------------------------------------------------------------------------------------------


class PatientCreateRequest(PatientBase):
    """A new patient; an empty department means the caller's own."""

    department: str = Field(default="", max_length=100)


class FeedbackRequest(FeedbackCreate):
    """A verdict: the true label (a class of the study's task), a comment, optionally the prediction judged."""

    prediction_id: int | None = None


# -- admin: users and API keys -------------------------------------------------------------------------------


class UserCreated(UserPublic):
    """A new user; a generated password is shown this once."""

    password: str | None = Field(
        default=None, description="The generated password, shown this once; null when the caller chose one."
    )


class ApiKeyCreate(BaseModel):
    """A new API key for a user (a machine, usually)."""

    name: str = Field(min_length=1, max_length=100, description="What the key is for, e.g. the scanner's name.")


class ApiKeyCreated(ApiKeyPublic):
    """A new API key; the key itself is shown this once."""

    key: str = Field(description="The key, shown this once; send it as 'Authorization: Bearer <key>'.")


# -- admin: models -------------------------------------------------------------------------------------------


class AliasChange(BaseModel):
    """Point an alias at a version."""

    version: int = Field(ge=1, description="The registered version.")
    alias: str = Field(description=f"One of: {', '.join(ALIASES)}.")


class Promotion(BaseModel):
    """What an alias change did: the registry before and after, and what the service swapped in."""

    task: str
    alias: str
    version: int
    previous: int | None = Field(description="The version the alias pointed at before (null: none).")
    changes: dict[str, str] = Field(description="What the service did for the task (swapped, unchanged, kept).")
    models: list[LoadedModelInfo]


class ModelVersions(BaseModel):
    """A task's registered versions, oldest first, and the one the service serves now."""

    task: str
    serving: str | None = Field(description="The version served now (null: none, or a bundle folder).")
    data: list[VersionInfo]
