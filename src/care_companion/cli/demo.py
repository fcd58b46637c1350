"""``care-companion demo``: the whole spine on synthetic data, on embedded defaults."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from care_companion import REVIEW_WARNING
from care_companion.cli.common import EXIT_GATE, console, err_console, friendly_errors, settings

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
    per_class: Annotated[int, typer.Option(help="Synthetic chest X-rays per class.")] = 200,
    non_xray: Annotated[int, typer.Option(help="Generated non-X-ray images.")] = 100,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs of the small demo models.")] = 12,
    wrist: Annotated[
        bool, typer.Option(help="Also build synthetic wrist studies and train the two-view model.")
    ] = True,
    wrist_studies: Annotated[int, typer.Option(help="Synthetic two-view wrist studies.")] = 1500,
    serve: Annotated[
        bool, typer.Option(help="Then start the service on the demo model and print its URL (Ctrl-C stops it).")
    ] = False,
) -> None:
    """Build synthetic chest and wrist data sets, train small DEMO models, evaluate, gate and register them."""
    from care_companion.workflows.demo import DEMO_RECIPE, run_demo, run_wrist_demo

    cfg = settings()
    console.rule("[bold]Care Companion demo: synthetic data, DEMO MODEL, NOT FOR CLINICAL USE")
    with friendly_errors():
        imported, outcome = run_demo(
            cfg,
            per_class=per_class,
            non_xray=non_xray,
            config=DEMO_RECIPE.model_copy(update={"finetune_epochs": epochs}),
        )
    _summarise(imported, outcome, disease="abnormal")
    wrist_outcome = None
    if wrist:
        console.rule("[bold]Wrist: synthetic two-view studies (PA + lateral), DEMO MODEL")
        with friendly_errors():
            wrist_imported, wrist_outcome = run_wrist_demo(
                cfg, studies=wrist_studies, config=DEMO_RECIPE.model_copy(update={"finetune_epochs": epochs})
            )
        _summarise(
            wrist_imported,
            wrist_outcome,
            disease="fracture",
            if_refused="the service will answer wrist requests with 503",
        )
        console.print(f"wrist model bundle: {wrist_outcome.bundle_dir}")
    console.print(f"evaluation report: {outcome.bundle_dir / 'evaluation.json'}")
    console.print(f"plots:             {outcome.bundle_dir / 'plots'}")
    console.print(f"MLflow UI:         mlflow ui --backend-store-uri {cfg.tracking_uri}")
    console.print(f"model bundle:      {outcome.bundle_dir}")
    console.print("[bold yellow]This is a demo model trained on synthetic images. Not for clinical use.")
    console.print(f"[yellow]{REVIEW_WARNING}")
    if not outcome.gate.passed:
        raise typer.Exit(EXIT_GATE)
    if serve:
        from care_companion.cli.serve import run_service
        from care_companion.records.db import upgrade
        from care_companion.workflows.accounts import open_account
        from care_companion.workflows.demo import DEMO_ADMIN, write_examples

        upgrade(cfg.db_url)  # the records database the service needs
        with friendly_errors():
            admin = open_account(cfg, username=DEMO_ADMIN, role="admin", api_key=True, reset=True)
        examples = write_examples(cfg)
        url = f"http://{cfg.host}:{cfg.port}"
        auth = f'-H "Authorization: Bearer {admin.api_key}"'
        console.rule("[bold]Serving the demo model")
        console.print(
            f"admin login: [bold]{admin.username}[/] / [bold]{admin.password}[/]   (new on every demo run)",
            soft_wrap=True,
        )
        lines = [
            f"admin API key: {admin.api_key}",
            f"  sign in:  curl -d username={admin.username} -d password={admin.password} {url}/v1/auth/token",
            f"  try it:   curl {auth} -F file=@{examples['pneumonia']} {url}/v1/predict/chest",
            f"            curl {auth} -F file=@{examples['photo']} {url}/v1/predict/chest   (not an X-ray: 422)",
        ]
        if wrist_outcome is not None and wrist_outcome.registered_version is not None:
            lines.append(
                f"  wrist:    curl {auth} -F pa=@{examples['wrist_pa']} -F lateral=@{examples['wrist_lateral']} "
                f"{url}/v1/predict/wrist"
            )
        lines.append(f"  dashboard: {url}/dashboard  (sign in with the login above)")
        for line in lines:
            console.print(line, soft_wrap=True, highlight=False)
        console.print(f"  API docs: {url}/docs  (Authorize with the login above)")
        run_service(cfg)
