"""``care-companion serve``: the inference service (uvicorn + the FastAPI app)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from care_companion import REVIEW_WARNING
from care_companion.cli.common import console, friendly_errors, given, settings
from care_companion.config import Settings


def run_service(cfg: Settings, *, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM); requests in flight finish first."""
    import uvicorn

    from care_companion.serving.app import create_app

    app = create_app(cfg)
    url = f"http://{cfg.host}:{cfg.port}"
    console.print(f"[bold]Care Companion service[/] on {url}  (API docs {url}/docs, metrics {url}/metrics)")
    console.print(f"[yellow]{REVIEW_WARNING}")
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=log_level,
        access_log=log_level == "debug",
        timeout_graceful_shutdown=30,
        server_header=False,
    )


def serve_cmd(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: CARE_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: CARE_PORT, 8000).")] = None,
    chest_model: Annotated[
        str | None,
        typer.Option(help="Chest model: a bundle folder or models:/chest@ALIAS (default: the registry alias)."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="TASK=REF: the model a task serves, a bundle folder or models:/TASK@ALIAS (as CARE_MODELS__TASK). "
            "Repeatable."
        ),
    ] = None,
    alias: Annotated[
        str | None, typer.Option(help="Registry alias to serve (default: CARE_SERVE_ALIAS, production).")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Largest micro-batch.")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Longest wait for a micro-batch to fill, in ms.")] = None,
    precision: Annotated[
        str | None, typer.Option(help="Model file: auto (INT8 only if it kept sensitivity), fp32 or int8.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the registered models over HTTP (falls back from production to staging)."""
    overrides: dict[str, Any] = given(
        host=host,
        port=port,
        chest_model=chest_model,
        serve_alias=alias,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        engine_precision=precision,
    )
    with friendly_errors():
        base = settings()
        if model:
            overrides["models"] = base.models | parse_model_options(model)
        cfg = Settings.model_validate(base.model_dump() | overrides)
        run_service(cfg, log_level=log_level)


def parse_model_options(values: list[str]) -> dict[str, str]:
    """``TASK=REF`` options as a task -> model mapping (each task checked against the registry).

    Raises:
        ConfigError: a value without '=' or naming an unknown task.
    """
    from care_companion.errors import ConfigError
    from care_companion.tasks import get_task

    models = {}
    for value in values:
        task, sep, ref = value.partition("=")
        if not sep or not ref.strip():
            raise ConfigError(f"--model {value!r}: give TASK=REF, e.g. chest=models:/chest@staging")
        models[get_task(task.strip()).name] = ref.strip()
    return models
