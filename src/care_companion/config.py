"""The one settings object: every configurable value, read from ``CARE_`` environment variables or ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "care-companion-development-secret-change-me"


class Settings(BaseSettings):
    """Project-wide settings; construct with overrides in tests, use :func:`get_settings` elsewhere."""

    model_config = SettingsConfigDict(
        env_prefix="CARE_",
        env_file=".env",
        extra="ignore",
        env_nested_delimiter="__",
        populate_by_name=True,
    )

    data_dir: Path = Field(
        default=Path("care-data"),
        description="Root for embedded defaults: object store folder, MLflow store, caches, model bundles.",
    )
    object_store: str | None = Field(
        default=None,
        description="Object store URI: a local folder path or file:// URI, or s3://bucket/prefix. "
        "Default: <data_dir>/store.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible server (MinIO, Swift S3); None for AWS."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; falls back to MLFLOW_TRACKING_URI, then a SQLite store in data_dir.",
    )
    seed: int = Field(default=42, description="Seed for splits, sampling, augmentation and initialisation.")
    num_threads: int | None = Field(default=None, description="Torch CPU threads; None lets torch decide.")
    min_image_side: int = Field(default=64, description="Images with a shorter side are rejected as too small.")
    max_image_pixels: int = Field(
        default=100_000_000, description="Decompression-bomb guard: images with more pixels are rejected."
    )
    gate_min_sensitivity: float = Field(
        default=0.95, description="Registry gate: minimum test sensitivity for every disease class."
    )
    gate_min_auc: float = Field(default=0.90, description="Registry gate: minimum abnormal-vs-normal test AUC.")
    target_sensitivity: float = Field(
        default=0.95, description="Sensitivity the operating point is chosen for on validation data."
    )

    task_modules: list[str] = Field(
        default_factory=list,
        description="Python modules that register extra tasks when imported (JSON list), besides the "
        "care_companion.tasks entry points.",
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description="Model each task serves (CARE_MODELS__<task>=...): a bundle folder or models:/<task>@ALIAS, "
        "models:/<task>/N; a task not named serves its registry alias.",
    )
    chest_model: str | None = Field(default=None, description="Alias of CARE_MODELS__chest.")
    wrist_model: str | None = Field(default=None, description="Alias of CARE_MODELS__wrist.")
    serve_alias: str = Field(default="production", description="Registry alias the service loads first.")
    canary_percent: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Share of patients (percent) whose studies the registry's canary alias serves, when a task has "
        "one (0: no canary). A patient always sees the same model.",
    )
    canary_alias: str = Field(default="canary", description="Registry alias of the canary version.")
    canary_mode: Literal["split", "shadow"] = Field(
        default="split",
        description="split: the canary answers its share of patients; shadow: it also scores every study production "
        "answers, results kept for comparison and never shown (a canary is then served even at 0 percent).",
    )
    serving_stats_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How often each replica writes its per-version traffic (requests, errors, refusals, latency) "
        "to the records database for the release report (0: only at shutdown).",
    )
    release_min_canary_studies: int = Field(
        default=30, ge=1, description="Radiologist-confirmed canary studies needed before canary -> production."
    )
    release_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Significance of the one-sided tests that refuse a canary whose sensitivity is below, or whose "
        "error rate is above, production's.",
    )
    release_max_latency_increase: float = Field(
        default=0.25,
        ge=0,
        description="Largest allowed rise of the canary's p95 latency over production's (0.25: 25%) before it counts "
        "as a regression.",
    )
    serve_fallback_alias: str | None = Field(
        default="staging", description="Alias loaded when serve_alias is not set; empty for none."
    )
    host: str = Field(default="127.0.0.1", description="Address the service listens on.")
    port: int = Field(default=8000, description="Port the service listens on.")
    max_batch_size: int = Field(default=16, ge=1, description="Largest micro-batch the engine runs at once.")
    max_wait_ms: float = Field(
        default=4.0, ge=0, description="Longest a request waits for others to join its micro-batch."
    )
    max_queue: int = Field(default=1024, ge=1, description="Requests waiting for inference before 503s.")
    decode_workers: int = Field(default=2, ge=1, description="Threads decoding and preprocessing uploads.")
    inference_threads: int | None = Field(
        default=None, description="ONNX Runtime intra-op threads; None lets it use every core."
    )
    engine_precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto",
        description="Served model file: auto uses a bundle's INT8 model only if it lost no sensitivity.",
    )
    max_upload_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest accepted request body (HTTP 413 above it)."
    )
    max_batch_upload_bytes: int = Field(
        default=128 * 1024 * 1024, ge=1024, description="Largest accepted body of a batch request (HTTP 413 above)."
    )
    batch_max_images: int = Field(default=16, ge=1, description="Most images in one batch request.")
    model_poll_seconds: float = Field(
        default=60.0, ge=0, description="How often the service checks the registry for a promoted version (0: never)."
    )
    confidence_margin: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Confidence is 'low' when P(abnormal) is this close to its threshold or the top two "
        "classes are this close.",
    )
    dicom_ae_title: str = Field(default="CARECOMPANION", max_length=16, description="Our DICOM AE title.")
    dicom_port: int = Field(default=11112, description="Port the DICOM receiver (`dicom listen`) listens on.")
    dicom_allowed_calling: list[str] = Field(
        default_factory=list, description="Calling AE titles the receiver accepts (empty: any)."
    )
    dicom_settle_seconds: float = Field(
        default=10.0, ge=0, description="Quiet time after a study's last instance before it is predicted on."
    )
    dicom_max_associations: int = Field(default=8, ge=1, description="Most DICOM associations at once.")
    dicom_service_url: str = Field(
        default="http://127.0.0.1:8000", description="The Care Companion service the DICOM receiver sends studies to."
    )
    dicom_results_destination: str = Field(
        default="",
        description="Where the results of received studies (SR, heat-map Secondary Captures) are sent: "
        "AET@host:port (empty: not sent).",
    )
    dicom_follow_seconds: float = Field(
        default=30.0, gt=0, description="How often the DICOM receiver asks the service for new verdicts on its results."
    )
    dicom_follow_days: float = Field(
        default=14.0, gt=0, description="How long a result sent to the PACS is followed for verdicts (days)."
    )
    dicom_metrics_port: int = Field(
        default=9112, ge=0, description="Port of the DICOM receiver's Prometheus metrics (0: not served)."
    )
    dicom_tls_cert: Path | None = Field(default=None, description="PEM certificate: the DICOM receiver speaks TLS.")
    dicom_tls_key: Path | None = Field(default=None, description="PEM private key of CARE_DICOM_TLS_CERT.")
    dicom_tls_ca: Path | None = Field(
        default=None, description="PEM CA bundle: DICOM senders must show a certificate it signed (mutual TLS)."
    )
    dicom_results_tls_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle: results go to the PACS over TLS, its certificate checked against it (our own "
        "CARE_DICOM_TLS_CERT/KEY are shown when set).",
    )
    dicom_pacs_url: str = Field(
        default="", description="The PACS's DICOMweb root (QIDO-RS/WADO-RS), for `dicom pull` (e.g. .../dicom-web)."
    )
    dicom_api_key: SecretStr | None = Field(
        default=None, description="API key (a technician's) the DICOM receiver uses with the service."
    )
    fhir_patient_system: str = Field(
        default="urn:care-companion:mrn",
        description="The identifier system of patients' MRNs in FHIR resources (the hospital's own URI).",
    )

    fhir_server_url: str = Field(
        default="", description="Base URL of the hospital's FHIR server `fhir push` sends results to (empty: none)."
    )
    fhir_server_token: SecretStr | None = Field(
        default=None, description="Bearer token for CARE_FHIR_SERVER_URL (none: no Authorization header)."
    )

    environment: Literal["development", "production"] = Field(
        default="development", description="production refuses insecure defaults (the development JWT secret)."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the records database (postgresql+psycopg://...); default SQLite in data_dir.",
    )
    jwt_secret: str = Field(
        default=DEV_JWT_SECRET, description="Secret that signs access tokens; must be set outside development."
    )
    db_wait_seconds: float = Field(
        default=30.0, ge=0, description="How long the service waits at start-up for an unreachable database."
    )
    access_token_minutes: int = Field(default=60, ge=1, description="Lifetime of an access token.")
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed sign-ins of one username (since its last success) that lock it."
    )
    login_lockout_minutes: float = Field(
        default=15.0, gt=0, description="How long those failures count, and so how long a lock lasts."
    )
    log_anonymous_predictions: bool = Field(
        default=True, description="Log the results of predictions made without a study (no image is kept, no patient)."
    )
    orphan_grace_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Objects no record references are swept (at start-up, `db sweep`) only once older than this: "
        "a request on another replica writes its object before its rows commit.",
    )
    orphan_sweep_seconds: float = Field(
        default=3600.0, ge=0, description="Seconds between orphan sweeps after the start-up one (0: none)."
    )
    retrain_min_feedback: int = Field(
        default=50, ge=1, description="Confirmed new labels that make `retrain --if-needed` retrain."
    )
    retrain_min_feedback_on_drift: int = Field(
        default=10,
        ge=1,
        description="With a recent drift alarm, `retrain --if-needed` retrains from this many new labels.",
    )
    retrain_drift_hours: float = Field(
        default=24.0, gt=0, description="How recent a drift alarm must be to count for `retrain --if-needed`."
    )
    drift_window: int = Field(default=200, ge=10, description="Inputs kept per task in the drift window.")
    drift_min_images: int = Field(
        default=30, ge=5, description="Inputs (and images of the task) needed before a drift test runs."
    )
    drift_check_every: int = Field(default=10, ge=1, description="New inputs between two drift checks of a task.")
    drift_alpha: float = Field(
        default=0.05, gt=0, lt=1, description="False-alarm rate of the drift verdict (Holm across its tests)."
    )
    drift_permutations: int = Field(default=200, ge=20, description="Permutations of the embedding (MMD) test.")
    online_window: int = Field(
        default=200, ge=1, description="Last confirmed studies per task that online sensitivity/specificity use."
    )
    monitor_refresh_seconds: float = Field(
        default=30.0, ge=0, description="Seconds between updates of the online-performance gauges (0: never)."
    )
    figshare_token: SecretStr | None = Field(
        default=None,
        description="Figshare personal token for `data fetch wrist` (FIGSHARE_TOKEN is read too).",
        validation_alias=AliasChoices("CARE_FIGSHARE_TOKEN", "FIGSHARE_TOKEN"),
    )
    no_progress: bool = Field(default=False, description="Hide progress bars (logs a line now and then instead).")
    ray_replica_cpus: float = Field(
        default=1.0, gt=0, description="CPUs Ray Serve reserves for each service replica (serve --ray)."
    )
    ray_max_replicas: int = Field(
        default=0,
        ge=0,
        description="Upper bound for Ray Serve's autoscaling of service replicas (0: a fixed --replicas count).",
    )
    ray_target_ongoing_requests: float = Field(
        default=8.0, gt=0, description="Requests in flight per replica that Ray Serve's autoscaler aims at."
    )
    ray_storage: str | None = Field(
        default=None,
        description="Where Ray Train keeps checkpoints (default <data_dir>/ray); on a cluster, storage every node "
        "reaches, e.g. s3://bucket/ray.",
    )

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> Settings:
        if self.environment == "production" and self.jwt_secret == DEV_JWT_SECRET:
            raise ValueError("CARE_JWT_SECRET must be set to a private value when CARE_ENVIRONMENT=production")
        return self

    @property
    def canary_enabled(self) -> bool:
        """Whether the service serves a canary beside production (a share of patients, or shadow scoring)."""
        return self.canary_percent > 0 or self.canary_mode == "shadow"

    def model_for(self, task: str) -> str | None:
        """The configured model reference of ``task`` (``CARE_MODELS__<task>``, or its older alias), if any."""
        legacy = {"chest": self.chest_model, "wrist": self.wrist_model}.get(task)
        value = self.models.get(task) or legacy
        return str(value).strip() or None if value else None

    @property
    def db_url(self) -> str:
        """Records database URL with the embedded default (SQLite under data_dir) resolved."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'care.db').resolve()}"

    @property
    def store_uri(self) -> str:
        """Object store URI with the embedded default resolved."""
        return self.object_store or str((self.data_dir / "store").resolve())

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI with the embedded default (SQLite under data_dir) resolved."""
        import os

        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{(self.data_dir / 'mlflow' / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """Where the embedded MLflow store keeps artifacts."""
        return (self.data_dir / "mlflow" / "artifacts").resolve()

    @property
    def cache_dir(self) -> Path:
        """Decoded-image caches."""
        return (self.data_dir / "cache").resolve()

    @property
    def ray_storage_uri(self) -> str:
        """Ray Train checkpoint storage with the embedded default resolved."""
        return self.ray_storage or str((self.data_dir / "ray").resolve())

    @property
    def runs_dir(self) -> Path:
        """Model bundles left by training runs."""
        return (self.data_dir / "runs").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
