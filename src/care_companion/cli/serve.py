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


def run_ray_service(cfg: Settings, replicas: int, *, address: str | None = None) -> None:
    """Serve as a Ray Serve deployment of ``replicas`` replicas until interrupted (Ctrl-C or SIGTERM)."""
    import signal
    import threading

    from care_companion.serving import ray_serve

    url = f"http://{cfg.host}:{cfg.port}"
    where = address or "a local Ray instance"
    console.print(f"[bold]Care Companion service[/] starting on Ray Serve ({where}), {replicas} replica(s) ...")
    ray_serve.start(cfg, replicas, address=address)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after Ray's start-up, which installs handlers of its own
        signal.signal(sig, lambda *_: stopping.set())
    try:
        console.print(f"[bold]Care Companion service[/] on {url}: {replicas} Ray Serve replica(s)")
        console.print(f"[yellow]{REVIEW_WARNING}")
        stopping.wait()
    finally:
        console.print("stopping: replicas finish their requests")
        ray_serve.stop()


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
    ray: Annotated[bool, typer.Option("--ray", help="Serve as a Ray Serve deployment (scale-out).")] = False,
    replicas: Annotated[
        int,
        typer.Option(
            min=1, help="With --ray: service replicas (autoscaling up to CARE_RAY_MAX_REPLICAS when that is larger)."
        ),
    ] = 2,
    ray_address: Annotated[
        str | None, typer.Option(help="With --ray: a Ray cluster (default: RAY_ADDRESS, else a local Ray).")
    ] = None,
) -> None:
    """Serve the registered models over HTTP (falls back from production to staging); --ray runs the same app
    as a Ray Serve deployment of --replicas replicas."""
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
        if ray:
            run_ray_service(cfg, replicas, address=ray_address)
        else:
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
