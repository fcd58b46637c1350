"""``care-companion data``: import, fetch and inspect data sets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from care_companion.cli.common import TASK_HELP, TaskArg, complete_task, console, friendly_errors, known_task, settings
from care_companion.tasks import TaskSpec, get_task

if TYPE_CHECKING:
    from care_companion.data.importer import ImportResult
    from care_companion.data.rejects import RejectSources

app = typer.Typer(help="Import, fetch and inspect versioned data sets.", no_args_is_help=True)
import_app = typer.Typer(help="Import labelled images into a task's data set.", no_args_is_help=True)
fetch_app = typer.Typer(help="Download public data sets (needs credentials).", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(fetch_app, name="fetch")

Seed = Annotated[int | None, typer.Option(help="Split seed (default: CARE_SEED).")]
NonXray = Annotated[
    int, typer.Option(help="Generated non-X-ray images (photos, synthetic scenes) added to the reject class 'unknown'.")
]
NonTaskMax = Annotated[int, typer.Option(help="At most this many images from each folder of non-task images.")]
OtherTasks = Annotated[
    bool,
    typer.Option(
        help="Add radiographs of the other tasks' latest data sets already imported (e.g. wrist films to chest, "
        "chest films to wrist) to the reject class 'unknown', so other body parts are refused (on by default)."
    ),
]
OtherTasksMax = Annotated[
    int,
    typer.Option(
        help="At most this many films from each other task's data set, and as many of the other body parts' "
        "radiographs its reject class holds (seeded samples)."
    ),
]
OtherRegions = Annotated[
    list[str] | None,
    typer.Option(
        "--other-region",
        help="With --region, FracAtlas films of this other region join 'unknown' (repeatable; default: every other "
        "region; 'none' for none).",
    ),
]
OtherRegionsMax = Annotated[int, typer.Option(help="At most this many FracAtlas films of each other region.")]
NonWrist = Annotated[
    list[Path] | None,
    typer.Option(
        "--non-wrist",
        "--non-task",
        help="A folder of images that are not wrist radiographs; every image in it goes to 'unknown'. Repeatable.",
        exists=True,
        file_okay=False,
    ),
]
Workers = Annotated[int, typer.Option(help="Decoding processes.")]
Names = Annotated[
    list[str] | None,
    typer.Option("--name", help="Source name recorded per image, one per SRC (default: the folder name)."),
]


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
    name: Names = None,
    non_xray: NonXray = 400,
    non_chest: Annotated[
        list[Path] | None,
        typer.Option(
            "--non-chest",
            "--non-task",
            help="A folder of images that are not chest X-rays (e.g. hand or leg radiographs); every image in it "
            "goes to the 'unknown' class. Repeatable.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    non_chest_max: NonTaskMax = 300,
    other_tasks: OtherTasks = True,
    other_tasks_max: OtherTasksMax = 300,
    seed: Seed = None,
    workers: Workers = 2,
) -> None:
    """Decode, validate, deduplicate and split chest X-rays into a new data-set version; by default the 'unknown'
    class also gets generated non-X-rays and other tasks' radiographs already in the store."""
    from care_companion.data.chest import import_chest
    from care_companion.imaging.decode import DecodeLimits
    from care_companion.storage import store_from_settings

    with friendly_errors():
        cfg = settings()
        result = import_chest(
            sources,
            store_from_settings(cfg),
            seed=cfg.seed if seed is None else seed,
            names=name or None,
            rejects=reject_sources(non_xray, other_tasks, other_tasks_max, non_chest, non_chest_max),
            limits=DecodeLimits.from_settings(cfg),
            workers=workers,
        )
    print_import(result, get_task("chest"))


@fetch_app.command("chest")
def fetch_chest_cmd(
    target: Annotated[Path, typer.Option(help="Where to unpack the download.")] = Path("downloads/chest"),
) -> None:
    """Download the Kaggle combined pneumonia/tuberculosis set with the Kaggle API (needs credentials)."""
    from care_companion.data.chest import fetch_chest

    with friendly_errors():
        path = fetch_chest(target)
    console.print(f"downloaded to {path}; now run: care-companion data import chest {path}")


Region = Annotated[
    str | None, typer.Option(help="FracAtlas region: 'hand' keeps hand/wrist films (not whole-arm 'mixed' films).")
]
Limit = Annotated[int | None, typer.Option(help="At most this many FracAtlas images (a seeded sample).")]


@import_app.command("wrist")
def import_wrist_cmd(
    src: Annotated[
        Path,
        typer.Argument(
            help="GRAZPEDWRI-DX folder: dataset.csv and the PNG images in any subfolders (as 'data fetch wrist' "
            "leaves it).",
            exists=True,
            file_okay=False,
        ),
    ],
    fracatlas: Annotated[
        Path | None,
        typer.Option(help="Also import this FracAtlas folder (one-view studies).", exists=True, file_okay=False),
    ] = None,
    region: Region = None,
    limit: Limit = None,
    drop_uncertain: Annotated[
        bool, typer.Option(help="Leave out studies whose diagnosis the table marks uncertain (kept by default).")
    ] = False,
    other_region: OtherRegions = None,
    other_regions_max: OtherRegionsMax = 1000,
    non_xray: NonXray = 400,
    non_wrist: NonWrist = None,
    non_wrist_max: NonTaskMax = 300,
    other_tasks: OtherTasks = True,
    other_tasks_max: OtherTasksMax = 300,
    seed: Seed = None,
    workers: Workers = 2,
) -> None:
    """Import GRAZPEDWRI-DX two-view wrist studies (and optionally FracAtlas) as a new wrist data-set version."""
    from care_companion.data.wrist import import_wrist
    from care_companion.imaging.decode import DecodeLimits
    from care_companion.storage import store_from_settings

    with friendly_errors():
        cfg = settings()
        result = import_wrist(
            src,
            store_from_settings(cfg),
            seed=cfg.seed if seed is None else seed,
            fracatlas=fracatlas,
            region=region,
            limit=limit,
            drop_uncertain=drop_uncertain,
            rejects=reject_sources(non_xray, other_tasks, other_tasks_max, non_wrist, non_wrist_max),
            other_regions=_regions(other_region),
            other_regions_max=other_regions_max,
            limits=DecodeLimits.from_settings(cfg),
            workers=workers,
        )
    print_import(result, get_task("wrist"))


@import_app.command("fracatlas")
def import_fracatlas_cmd(
    src: Annotated[
        Path,
        typer.Argument(help="FracAtlas folder: dataset.csv and images/...", exists=True, file_okay=False),
    ],
    region: Region = None,
    limit: Limit = None,
    other_region: OtherRegions = None,
    other_regions_max: OtherRegionsMax = 1000,
    non_xray: NonXray = 400,
    non_wrist: NonWrist = None,
    non_wrist_max: NonTaskMax = 300,
    other_tasks: OtherTasks = True,
    other_tasks_max: OtherTasksMax = 300,
    seed: Seed = None,
    workers: Workers = 2,
) -> None:
    """Import FracAtlas alone as a new wrist data-set version (one-view studies; 'import wrist --fracatlas' adds
    it to GRAZPEDWRI-DX instead)."""
    from care_companion.data.wrist import import_fracatlas
    from care_companion.imaging.decode import DecodeLimits
    from care_companion.storage import store_from_settings

    with friendly_errors():
        cfg = settings()
        result = import_fracatlas(
            src,
            store_from_settings(cfg),
            seed=cfg.seed if seed is None else seed,
            region=region,
            limit=limit,
            rejects=reject_sources(non_xray, other_tasks, other_tasks_max, non_wrist, non_wrist_max),
            other_regions=_regions(other_region),
            other_regions_max=other_regions_max,
            limits=DecodeLimits.from_settings(cfg),
            workers=workers,
        )
    print_import(result, get_task("wrist"))


def reject_sources(
    non_xray: int, other_tasks: bool, other_tasks_max: int, folders: list[Path] | None, folders_max: int
) -> RejectSources:
    """The reject-class sources the import options name."""
    from care_companion.data.rejects import RejectSources

    return RejectSources(
        non_xray=non_xray,
        other_tasks=other_tasks,
        other_tasks_max=other_tasks_max,
        folders=tuple(folders or ()),
        folders_max=folders_max,
    )


def _regions(given: list[str] | None) -> list[str] | None:
    """``--other-region`` values: None (every other region) when not given, [] for 'none'."""
    if not given:
        return None
    return [] if [g.lower() for g in given] == ["none"] else given


@import_app.command("folders")
def import_folders_cmd(
    task: TaskArg,
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Class-folder trees: one folder per class of the task (any case, any depth).",
            exists=True,
            file_okay=False,
        ),
    ],
    name: Names = None,
    seed: Seed = None,
    workers: Workers = 2,
) -> None:
    """Import class-folder trees into any task's data set (decoded, validated, deduplicated, split by patient
    where names carry one): the generic importer of tasks without one of their own."""
    from care_companion.data.generic import import_folders
    from care_companion.imaging.decode import DecodeLimits
    from care_companion.storage import store_from_settings

    with friendly_errors():
        cfg = settings()
        spec = get_task(task)
        result = import_folders(
            sources,
            store_from_settings(cfg),
            task=spec,
            seed=cfg.seed if seed is None else seed,
            names=name or None,
            workers=workers,
            limits=DecodeLimits.from_settings(cfg),
        )
    print_import(result, spec)


@fetch_app.command("wrist")
def fetch_wrist_cmd(
    target: Annotated[Path, typer.Option(help="Where to download and unpack.")] = Path("downloads/wrist"),
    token: Annotated[
        str | None,
        typer.Option(help="Figshare personal token (default: CARE_FIGSHARE_TOKEN or FIGSHARE_TOKEN; prefer those)."),
    ] = None,
) -> None:
    """Download GRAZPEDWRI-DX from Figshare (needs a Figshare personal token), checked and unpacked."""
    from care_companion.data.wrist import fetch_wrist

    with friendly_errors():
        path = fetch_wrist(target, token)
    console.print(f"downloaded to {path}; now run: care-companion data import wrist {path}")


@app.command("show")
def show_cmd(
    task: Annotated[str, typer.Argument(help=TASK_HELP, callback=known_task, autocompletion=complete_task)] = "chest",
    version: Annotated[str | None, typer.Option(help="Data-set version (default: latest).")] = None,
) -> None:
    """Show a data set's version, its studies per split, class and views, and its images per source."""
    from care_companion.data.manifest import load_manifest, study_counts
    from care_companion.storage import store_from_settings

    with friendly_errors():
        spec = get_task(task)
        manifest = load_manifest(store_from_settings(settings()), task, version)
        counts = study_counts(manifest.frame, spec.views)
    frame = manifest.frame
    console.print(*split_tables(f"{task} data set {manifest.version}: {len(frame)} images", counts, spec))
    console.print(frame.groupby(["source", "label"]).size().unstack(fill_value=0).to_string())


def split_tables(title: str, counts: dict[str, dict[str, int]], task: TaskSpec) -> list[Table]:
    """Studies per split and class with images per split; for a multi-view task a second table of studies per
    split and view combination (two narrow tables fit a terminal where one wide one wraps its headers).

    Args:
        title: the first table's title.
        counts: split -> count, as ``data.manifest.study_counts`` gives them.
        task: the task (its classes and views choose the columns).
    """
    from care_companion.data.splits import SPLITS

    labels = [c for c in task.classes if any(f"label:{c}" in row for row in counts.values())]
    kinds = sorted(
        {k.removeprefix("views:") for row in counts.values() for k in row if k.startswith("views:")},
        key=lambda kind: (-kind.count("+"), [task.views.index(v) for v in kind.split("+")]),
    )
    splits = [*SPLITS, *sorted(set(counts) - set(SPLITS))]

    def table(title: str, columns: dict[str, str], caption: str | None = None) -> Table:
        out = Table(title=title, caption=caption)
        out.add_column("split", no_wrap=True)
        for header in columns:
            out.add_column(header, justify="right", no_wrap=True)
        for split in splits:
            out.add_row(split, *[str(counts.get(split, {}).get(key, 0)) for key in columns.values()])
        return out

    by_class = {label: f"label:{label}" for label in labels} | {"images": "images"}
    multi = task.multiview
    tables = [table(title, by_class, "class columns count studies" if multi else None)]
    if multi:
        by_views = {(k if "+" in k else f"{k} only"): f"views:{k}" for k in kinds}
        tables.append(table(f"{task.name} studies by views", by_views))
    return tables


def print_import(result: ImportResult, task: TaskSpec) -> None:
    """What an import produced: the split table, images per source, skipped files, report and version."""
    title = f"{task.name} data set {result.version}: {result.n_images} images"
    console.print(*split_tables(title, result.studies, task))
    for source, counts in result.counts.items():
        console.print(f"  source {source}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for source, notes in result.details.items():
        missing = notes.get("missing_images", 0)
        if missing:
            examples = ", ".join(notes.get("missing_examples", [])[:5])
            console.print(f"  [yellow]{source}: {missing} images named in its table not found[/] (e.g. {examples})")
    if task.reject is not None:
        rejects = {s: c[task.reject] for s, c in result.counts.items() if c.get(task.reject)}
        console.print(
            f"reject class '{task.reject}' (not a {task.body_part} radiograph): "
            + (", ".join(f"{n} from {s}" for s, n in rejects.items()) or "none")
            + ("" if any(s.startswith("other-task:") for s in rejects) else " (no other task's films imported yet)")
        )
    console.print(f"skipped {len(result.skipped)} files, dropped {len(result.duplicates)} duplicates")
    for s in result.skipped[:20]:
        console.print(f"  [yellow]skipped[/] {s.source}/{s.path}: {s.reason}")
    if len(result.skipped) > 20:
        console.print(f"  ... and {len(result.skipped) - 20} more")
    console.print(f"import report: {settings().store_uri}/{result.report_key}")
    console.print(f"version: [bold]{result.version}[/]")
