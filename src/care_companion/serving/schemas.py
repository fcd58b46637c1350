"""Pydantic schemas of every API response: the contract technicians' tools and other systems read."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from care_companion import REVIEW_WARNING


class ErrorBody(BaseModel):
    """Every error answer: a stable machine-readable code and a sentence for people."""

    error: str = Field(description="Stable error code, e.g. truncated, not_an_image, not_a_chest_xray.")
    detail: str = Field(description="What went wrong and what to do about it.")


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
