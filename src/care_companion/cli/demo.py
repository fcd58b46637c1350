"""``care-companion demo``: the whole spine on synthetic data, on embedded defaults."""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING, Annotated

import typer

from care_companion import REVIEW_WARNING
from care_companion.cli.common import EXIT_GATE, console, err_console, friendly_errors, settings
from care_companion.config import Settings

DEMO_PER_CLASS = 200
DEMO_NON_XRAY = 100
DEMO_WRIST_STUDIES = 1500
SERVE_WAIT_SECONDS = 90.0

if TYPE_CHECKING:  # the CLI imports training (torch) only when a command needs it
    from care_companion.data.importer import ImportResult
    from care_companion.workflows.training import TrainOutcome


def _summarise(imported: ImportResult, outcome: TrainOutcome, *, disease: str, if_refused: str = "") -> None:
    """The data set, the test figures (disease classes together) and what the gate decided, for one demo model."""
    m = outcome.metrics
    console.print(
        f"data set {imported.version}: {imported.n_images} images, "
        f"{len(imported.skipped)} skipped, {len(imported.duplicates)} duplicates"
    )
    console.print(
        f"test split: {disease} AUC {m.get('auc_abnormal', float('nan')):.3f}, sensitivity "
        f"{m.get('sensitivity_abnormal', float('nan')):.3f}, "
        f"specificity {m.get('specificity_abnormal', float('nan')):.3f}"
    )
    if outcome.registered_version is not None:
        console.print(
            f"[green]registered[/] {outcome.task} version {outcome.registered_version} (alias staging) — demo model"
        )
    else:
        why = "; ".join(outcome.gate.shortfalls)
        err_console.print(
            f"[bold red]gate refused the {outcome.task} demo model:[/] {why}"
            + (f" ({if_refused})" if if_refused else "")
        )


def demo_cmd(
    per_class: Annotated[int, typer.Option(help="Synthetic chest X-rays per class.")] = DEMO_PER_CLASS,
    non_xray: Annotated[int, typer.Option(help="Generated non-X-ray images.")] = DEMO_NON_XRAY,
    epochs: Annotated[
        int | None, typer.Option(help="Fine-tuning epochs of both demo models (default: each demo recipe's own).")
    ] = None,
    wrist: Annotated[
        bool, typer.Option(help="Also build synthetic wrist studies and train the two-view model.")
    ] = True,
    wrist_studies: Annotated[int, typer.Option(help="Synthetic two-view wrist studies.")] = DEMO_WRIST_STUDIES,
    serve: Annotated[
        bool,
        typer.Option(
            help="Serve the chest model as soon as it is registered (the wrist model joins when trained) and print "
            "the URL; Ctrl-C stops it."
        ),
    ] = False,
) -> None:
    """Build synthetic chest and wrist data sets, train small DEMO models, evaluate, gate and register them."""
    from care_companion.workflows.demo import DEMO_CHEST_RECIPE, DEMO_WRIST_RECIPE, run_demo, run_wrist_demo

    started = time.monotonic()
    cfg = settings()
    epochs_set = {} if epochs is None else {"finetune_epochs": epochs}
    chest_recipe, wrist_recipe = (r.model_copy(update=epochs_set) for r in (DEMO_CHEST_RECIPE, DEMO_WRIST_RECIPE))
    console.rule("[bold]Care Companion demo: synthetic data, DEMO MODEL, NOT FOR CLINICAL USE")
    with friendly_errors():
        imported, outcome = run_demo(cfg, per_class=per_class, non_xray=non_xray, config=chest_recipe)
    _summarise(imported, outcome, disease="abnormal")
    console.print(f"chest model bundle: {outcome.bundle_dir}  (evaluation.json, plots/)")
    if not outcome.gate.passed:
        raise typer.Exit(EXIT_GATE)
    service = _serve(cfg, started, wrist=wrist) if serve else None
    try:
        if wrist:
            console.rule("[bold]Wrist: synthetic two-view studies (PA + lateral), DEMO MODEL")
            with friendly_errors():
                wrist_imported, wrist_outcome = run_wrist_demo(cfg, studies=wrist_studies, config=wrist_recipe)
            _summarise(
                wrist_imported,
                wrist_outcome,
                disease="fracture",
                if_refused="the service will answer wrist requests with 503",
            )
            console.print(f"wrist model bundle: {wrist_outcome.bundle_dir}")
            if service is not None and wrist_outcome.registered_version is not None:
                _announce(cfg, service, "wrist", started)
        console.print(f"MLflow UI: mlflow ui --backend-store-uri {cfg.tracking_uri}")
        console.print("[bold yellow]These are demo models trained on synthetic images. Not for clinical use.")
        console.print(f"[yellow]{REVIEW_WARNING}")
        if service is not None:
            console.print("serving; Ctrl-C stops the service")
            service.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if service is not None:
            _stop(service)


def _serve(cfg: Settings, started: float, *, wrist: bool) -> subprocess.Popen[bytes]:
    """Start the service on the chest model while the wrist model trains; print the login and examples."""
    from care_companion.records.db import upgrade
    from care_companion.workflows.demo import demo_accounts, start_service, write_examples

    upgrade(cfg.db_url)  # the records database the service needs
    with friendly_errors():
        admin, *clinicians = demo_accounts(cfg)
    examples = write_examples(cfg)
    console.rule("[bold]Serving the demo models")
    service = start_service(cfg)
    _announce(cfg, service, "chest", started)
    url = f"http://{cfg.host}:{cfg.port}"
    auth = f'-H "Authorization: Bearer {admin.api_key}"'
    console.print(
        f"admin login: [bold]{admin.username}[/] / [bold]{admin.password}[/]   (new on every demo run)", soft_wrap=True
    )
    for person in clinicians:
        console.print(
            f"{person.role} login: [bold]{person.username}[/] / [bold]{person.password}[/]   "
            f"(department {person.department}; new on every demo run)",
            soft_wrap=True,
        )
    lines = [
        f"admin API key: {admin.api_key}",
        f"  sign in:  curl -d username={admin.username} -d password={admin.password} {url}/v1/auth/token",
        f"  try it:   curl {auth} -F file=@{examples['pneumonia']} {url}/v1/predict/chest",
        f"            curl {auth} -F file=@{examples['photo']} {url}/v1/predict/chest   (not an X-ray: 422)",
    ]
    if wrist:
        lines.append(
            f"  wrist (once its model joins): curl {auth} -F pa=@{examples['wrist_pa']} "
            f"-F lateral=@{examples['wrist_lateral']} {url}/v1/predict/wrist"
        )
        lines.append(
            f"            curl {auth} -F pa=@{examples['normal']} {url}/v1/predict/wrist   (a chest film: 422)"
        )
    lines += [
        f"  clinicians' app: {url}/app  (technician: upload; radiologist: worklist and reading)",
        f"  dashboard: {url}/dashboard  (sign in with the login above)",
        f"  API docs:  {url}/docs",
    ]
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)
    return service


def _announce(cfg: Settings, service: subprocess.Popen[bytes], task: str, started: float) -> None:
    """Wait for the service to serve ``task`` and say when it did, counted from the demo's start."""
    from care_companion.workflows.demo import wait_until_served

    if wait_until_served(cfg, task, timeout=SERVE_WAIT_SECONDS, process=service):
        elapsed = time.monotonic() - started
        console.print(f"[green]the service answers {task} requests[/], {elapsed / 60:.1f} min after the demo started")
    else:
        err_console.print(f"[bold red]the service did not load the {task} model within {SERVE_WAIT_SECONDS:.0f} s")


def _stop(service: subprocess.Popen[bytes]) -> None:
    """Stop the demo's service (requests in flight finish first)."""
    if service.poll() is None:
        service.terminate()
        try:
            service.wait(timeout=40)
        except subprocess.TimeoutExpired:
            service.kill()
