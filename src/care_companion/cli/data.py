"""``care-companion data``: import, fetch and inspect data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from care_companion.cli.common import console, friendly_errors, settings

app = typer.Typer(help="Import, fetch and inspect versioned data sets.", no_args_is_help=True)
import_app = typer.Typer(help="Import labelled images into a task's data set.", no_args_is_help=True)
fetch_app = typer.Typer(help="Download public data sets (needs credentials).", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(fetch_app, name="fetch")


@import_app.command("chest")
def import_chest_cmd(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Source folders: the Kaggle combined-unknown-pneumonia-and-tuberculosis layout or any tree "
            "with class folders normal/pneumonia/tuberculosis/unknown (any case, any depth).",
            exists=True,
            file_okay=False,
        ),
    ],
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="Source name recorded per image, one per SRC (default: the folder name)."),
    ] = None,
    non_xray: Annotated[
        int, typer.Option(help="Generated non-X-ray images (photos, screenshots) added to the 'unknown' class.")
    ] = 400,
    non_chest: Annotated[
        list[Path] | None,
        typer.Option(
            help="A folder of images that are not chest X-rays (e.g. hand or leg radiographs); every image in it "
            "goes to the 'unknown' class. Repeatable.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    non_chest_max: Annotated[int, typer.Option(help="At most this many images from each --non-chest folder.")] = 300,
    seed: Annotated[int | None, typer.Option(help="Split seed (default: CARE_SEED).")] = None,
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 2,
) -> None:
    """Decode, validate, deduplicate and split chest X-rays into a new data-set version."""
    from care_companion.data.chest import import_chest
    from care_companion.storage import store_from_settings

    with friendly_errors():
        cfg = settings()
        result = import_chest(
            sources,
            store_from_settings(cfg),
            seed=cfg.seed if seed is None else seed,
            names=name or None,
            non_xray=non_xray,
            non_chest=non_chest or None,
            non_chest_max=non_chest_max,
            min_side=cfg.min_image_side,
            max_pixels=cfg.max_image_pixels,
            workers=workers,
        )
    table = Table(title=f"chest data set {result.version}: {result.n_images} images")
    classes = sorted({c for counts in result.splits.values() for c in counts})
    table.add_column("split")
    for c in classes:
        table.add_column(c, justify="right")
    for split in ("train", "val", "test", "canary", "production"):
        counts = result.splits.get(split, {})
        table.add_row(split, *[str(counts.get(c, 0)) for c in classes])
    console.print(table)
    for source, counts in result.counts.items():
        console.print(f"  source {source}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    console.print(f"skipped {len(result.skipped)} files, dropped {len(result.duplicates)} duplicates")
    for s in result.skipped[:20]:
        console.print(f"  [yellow]skipped[/] {s.source}/{s.path}: {s.reason}")
    if len(result.skipped) > 20:
        console.print(f"  ... and {len(result.skipped) - 20} more")
    console.print(f"import report: {settings().store_uri}/{result.report_key}")
    console.print(f"version: [bold]{result.version}[/]")


@fetch_app.command("chest")
def fetch_chest_cmd(
    target: Annotated[Path, typer.Option(help="Where to unpack the download.")] = Path("downloads/chest"),
) -> None:
    """Download the Kaggle combined pneumonia/tuberculosis set with the Kaggle API (needs credentials)."""
    from care_companion.data.chest import fetch_chest

    with friendly_errors():
        path = fetch_chest(target)
    console.print(f"downloaded to {path}; now run: care-companion data import chest {path}")


@app.command("show")
def show_cmd(
    task: Annotated[str, typer.Argument(help="Task name (chest).")] = "chest",
    version: Annotated[str | None, typer.Option(help="Data-set version (default: latest).")] = None,
) -> None:
    """Show a data set's version and its images per split, class and source."""
    from care_companion.data.manifest import load_manifest
    from care_companion.storage import store_from_settings

    with friendly_errors():
        manifest = load_manifest(store_from_settings(settings()), task, version)
    frame = manifest.frame
    console.print(f"{task} data set [bold]{manifest.version}[/]: {len(frame)} images")
    console.print(frame.groupby(["split", "label"]).size().unstack(fill_value=0).to_string())
    console.print(frame.groupby(["source", "label"]).size().unstack(fill_value=0).to_string())
