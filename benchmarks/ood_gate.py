"""Does every task refuse what is not its body part? The reject class, the out-of-distribution gate, and both.

Trains (or reuses, ``--wrist-bundle`` / ``--chest-bundle``) a wrist model on FracAtlas's hand/wrist films and a
chest model on cxr-real + kermany-train imported with the chest import's defaults (which add the wrist data
set's films, already in the store, to the 'unknown' class), each with its task's recipe. Then builds held-out
sets that no training, calibration or threshold saw:

* other body parts: FracAtlas leg/hip/shoulder films (not hand: the wrist model trained on the hand region and
  the chest 'unknown' class got hand films) for both tasks, and cxr-real/kermany chest films for the wrist model;
* real photos: crops of the photographs that installed packages ship (scikit-learn's sample images,
  matplotlib's sample data, and scikit-image samples the chest 'unknown' class does not use);
* screenshots: user-interface-like images rendered with PIL (windows, text, buttons, tables);

and reports, per task and served precision, the share of non-task images that get a finding (target <= 1%) and
the share of the task's real test-split films refused (target <= 1%), for the reject class alone, the gate
alone and both. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from benchmarks.common import OUT, SHARED_DATA, write_result
from care_companion.config import Settings
from care_companion.data.cache import build_cache
from care_companion.data.importer import prepare
from care_companion.data.manifest import load_manifest
from care_companion.data.synthetic_chest import OFFLINE_SAMPLES
from care_companion.imaging.decode import decode_image
from care_companion.models.bundle import load_meta
from care_companion.models.ood import LoadedGate, load_gate
from care_companion.models.predictor import BundlePredictor
from care_companion.storage import store_from_settings
from care_companion.tasks import CHEST, WRIST, TaskSpec
from care_companion.training.trainer import TrainConfig
from care_companion.workflows.scoring import model_feed, score_feed
from care_companion.workflows.training import split_arrays, train_task

HELD_OUT_PER_KIND = 300
PHOTO_CROPS = 120
SCREENSHOTS = 120


# ------------------------------------------------------------------------------------------------ training


def recipe(task: TaskSpec, settings: Settings, overrides: dict[str, Any]) -> TrainConfig:
    """The task's recipe with the benchmark's overrides (a shorter schedule on a busy machine)."""
    return TrainConfig(**(task.recipe.model_dump() | overrides), seed=settings.seed)


HELD_OUT_REGIONS = ("hip", "shoulder")  # FracAtlas regions no model trains on; leg films teach the wrist 'unknown'


def import_wrist_set(settings: Settings) -> str:
    """Import FracAtlas's hand/wrist films as the wrist data set with the import's defaults except the other
    regions: only leg films join 'unknown' (hip and shoulder stay held out); returns the version."""
    from care_companion.data.wrist import import_fracatlas

    imported = import_fracatlas(
        SHARED_DATA / "fracatlas", store_from_settings(settings), seed=settings.seed, region="hand",
        other_regions=["leg"],
    )  # fmt: skip
    return imported.version


def train_wrist(settings: Settings, overrides: dict[str, Any]) -> tuple[Path, float, dict[str, int]]:
    """Import the wrist data set again (now the chest films in the store join 'unknown') and train the wrist
    recipe; (bundle, seconds, reject-class images by source)."""
    started = time.perf_counter()
    version = import_wrist_set(settings)
    config = recipe(WRIST, settings, overrides)
    outcome = train_task(WRIST, config, settings=settings, dataset_version=version)
    return outcome.bundle_dir, time.perf_counter() - started, reject_sources(outcome.bundle_dir, settings)


def train_chest(settings: Settings, overrides: dict[str, Any]) -> tuple[Path, float, int]:
    """Import the chest sets with the import's defaults (other tasks' films in the store join 'unknown') and train
    the chest recipe; (bundle, seconds, other-task films added)."""
    started = time.perf_counter()
    version = import_chest_set(settings)
    config = recipe(CHEST, settings, overrides)
    outcome = train_task(CHEST, config, settings=settings, dataset_version=version)
    return outcome.bundle_dir, time.perf_counter() - started, other_task_films(outcome.bundle_dir, settings)


def import_chest_set(settings: Settings) -> str:
    """Import cxr-real + kermany-train with the chest import's defaults; returns the version."""
    from care_companion.data.chest import import_chest

    sources = [SHARED_DATA / "cxr-real", SHARED_DATA / "kermany-train"]
    return import_chest(sources, store_from_settings(settings), seed=settings.seed).version


def rebuild_gate(bundle: Path, settings: Settings) -> None:
    """Fit the bundle's out-of-distribution gate again, with this code's rule, on its data set's splits."""
    from care_companion.workflows.ood_gate import build_ood_gate

    task, splits = bundle_splits(bundle, settings)
    build_ood_gate(bundle, task, train=splits["train"], val=splits["val"], seed=settings.seed)


def bundle_splits(bundle: Path, settings: Settings) -> tuple[TaskSpec, dict[str, Any]]:
    """The bundle's task and its data set's splits at the bundle's input size."""
    meta = load_meta(bundle)
    task = meta.task_spec()
    store = store_from_settings(settings)
    manifest = load_manifest(store, task.name, meta.dataset_version)
    return task, split_arrays(manifest, build_cache(store, manifest, meta.input_size, settings.cache_dir), task)


def reject_sources(bundle: Path, settings: Settings) -> dict[str, int]:
    """The bundle's data set's reject-class images by source."""
    meta = load_meta(bundle)
    frame = load_manifest(store_from_settings(settings), meta.task, meta.dataset_version).frame
    unknown = frame[frame["label"] == meta.task_spec().reject]
    return {str(k): int(v) for k, v in unknown["source"].value_counts().items()}


def other_task_films(bundle: Path, settings: Settings) -> int:
    """How many of the bundle's reject-class images came from other tasks' data sets."""
    return sum(n for source, n in reject_sources(bundle, settings).items() if source.startswith("other-task:"))


# ------------------------------------------------------------------------------------------- held-out sets


def _read(path: Path) -> np.ndarray | None:
    try:
        return decode_image(path.read_bytes(), name=path.name)
    except Exception:
        return None


def seen_wrist(settings: Settings) -> set[str]:
    """Pixel hashes of the latest wrist data set's images."""
    return set(load_manifest(store_from_settings(settings), "wrist").frame["pixel_sha256"])


def trained_on(settings: Settings) -> set[str]:
    """Pixel hashes of every image in the latest wrist and chest data sets (held-out sets leave them out)."""
    store = store_from_settings(settings)
    seen: set[str] = set()
    for task in ("wrist", "chest"):
        try:
            seen |= set(load_manifest(store, task).frame["pixel_sha256"])
        except Exception:
            continue
    return seen


def _unseen(paths: list[Path], seen: set[str], rng: np.random.Generator) -> list[np.ndarray]:
    """Up to HELD_OUT_PER_KIND decoded images of ``paths`` (a seeded order) that no data set holds."""
    out = []
    for i in rng.permutation(len(paths)):
        image = _read(paths[int(i)])
        if image is not None and prepare(image, b"").pixel_sha256 not in seen:
            out.append(image)
        if len(out) == HELD_OUT_PER_KIND:
            break
    return out


def other_body_parts(rng: np.random.Generator, seen: set[str]) -> dict[str, list[np.ndarray]]:
    """FracAtlas films showing no hand: of regions no model trains on (hip, shoulder), and leg films that are
    in no data set (the wrist 'unknown' class learns from other leg films)."""
    table = SHARED_DATA / "fracatlas" / "dataset.csv"
    with table.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["hand"] == "0"]
    paths = {p.name: p for p in (SHARED_DATA / "fracatlas" / "images").rglob("*.jpg")}
    unseen_regions = [r for r in rows if r["leg"] == "0" and any(r[k] == "1" for k in HELD_OUT_REGIONS)]
    legs = [r for r in rows if r["leg"] == "1"]
    return {
        "other regions (FracAtlas hip/shoulder, no leg)": _unseen(
            [paths[r["image_id"]] for r in unseen_regions if r["image_id"] in paths], seen, rng
        ),
        "leg films in no data set (FracAtlas)": _unseen(
            [paths[r["image_id"]] for r in legs if r["image_id"] in paths], seen, rng
        ),
    }


def chest_films(rng: np.random.Generator, seen_by_wrist: set[str]) -> list[np.ndarray]:
    """cxr-real and kermany-train chest films the wrist data set does not hold, a seeded sample."""
    paths = sorted((SHARED_DATA / "cxr-real").rglob("*.jpg")) + sorted((SHARED_DATA / "kermany-train").rglob("*.jpeg"))
    paths += sorted((SHARED_DATA / "kermany-train").rglob("*.jpg"))
    return _unseen(paths, seen_by_wrist, rng)


def photo_sources() -> dict[str, np.ndarray]:
    """Real photographs shipped by installed packages, as 8-bit grayscale, by name (the chest 'unknown' class's
    scikit-image samples left out)."""
    found: dict[str, np.ndarray] = {}

    def gray(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(np.asarray(pixels).astype(np.uint8)).convert("L"))

    try:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        for name, pixels in zip(bunch.filenames, bunch.images, strict=True):
            found[f"sklearn:{Path(name).name}"] = gray(pixels)
    except Exception:
        pass
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
            if (sample / name).is_file():
                found[f"matplotlib:{name}"] = np.asarray(Image.open(sample / name).convert("L"))
    except Exception:
        pass
    try:
        from skimage import data

        for name in ("coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "motorcycle_left"):
            if name in OFFLINE_SAMPLES or not hasattr(data, name):
                continue
            try:
                pixels = getattr(data, name)()
            except Exception:
                continue
            pixels = pixels[0] if isinstance(pixels, tuple) else pixels
            found[f"skimage:{name}"] = gray(pixels[..., :3] if pixels.ndim == 3 else pixels)
    except Exception:
        pass
    return found


def photos(rng: np.random.Generator, sources: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Random crops (30-100% of each side, whole photo included) of the shipped photographs."""
    images, names = [], sorted(sources)
    for k in range(PHOTO_CROPS):
        image = sources[names[k % len(names)]]
        h, w = image.shape
        if k < len(names):
            images.append(image)
            continue
        ch, cw = int(h * rng.uniform(0.3, 1.0)), int(w * rng.uniform(0.3, 1.0))
        r, c = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        images.append(np.ascontiguousarray(image[r : r + ch, c : c + cw]))
    return images


def screenshot(rng: np.random.Generator) -> np.ndarray:
    """A user-interface-like image: a window with a title bar, text lines, buttons, a table or a chart."""
    w, h = int(rng.integers(480, 1280)), int(rng.integers(360, 900))
    light = rng.random() < 0.7
    image = Image.new("L", (w, h), int(rng.integers(225, 255)) if light else int(rng.integers(20, 60)))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    ink = 20 if light else 220
    draw.rectangle([0, 0, w, int(rng.integers(24, 48))], fill=int(rng.integers(60, 200)))
    draw.text((10, 6), "Care Companion - Worklist" if rng.random() < 0.5 else "Report viewer", fill=255, font=font)
    y = 60
    while y < h - 30:
        kind = rng.random()
        if kind < 0.5:
            words = " ".join(
                "".join(chr(int(rng.integers(97, 123))) for _ in range(int(rng.integers(2, 9))))
                for _ in range(int(rng.integers(3, 12)))
            )
            draw.text((int(rng.integers(10, 60)), y), words, fill=ink, font=font)
            y += int(rng.integers(14, 24))
        elif kind < 0.7:
            x = int(rng.integers(10, 200))
            draw.rectangle([x, y, x + int(rng.integers(60, 160)), y + 26], fill=int(rng.integers(80, 200)), outline=ink)
            draw.text((x + 8, y + 7), "Submit" if rng.random() < 0.5 else "Cancel", fill=255, font=font)
            y += 40
        elif kind < 0.85:
            rows, cols = int(rng.integers(3, 8)), int(rng.integers(2, 6))
            cw = (w - 40) // cols
            for r in range(rows):
                for c in range(cols):
                    draw.rectangle([20 + c * cw, y + r * 20, 20 + (c + 1) * cw, y + (r + 1) * 20], outline=ink)
                    draw.text((24 + c * cw, y + r * 20 + 4), str(int(rng.integers(0, 9999))), fill=ink, font=font)
            y += rows * 20 + 20
        else:
            bars = int(rng.integers(4, 12))
            bw = (w - 60) // bars
            for b in range(bars):
                bh = int(rng.integers(10, 120))
                draw.rectangle(
                    [30 + b * bw, y + 120 - bh, 30 + b * bw + bw - 6, y + 120], fill=int(rng.integers(40, 200))
                )
            y += 140
    return np.asarray(image)


# --------------------------------------------------------------------------------------------------- scoring


def decisions(predictor: BundlePredictor, gate: LoadedGate | None, feed: Any, task: TaskSpec) -> dict[str, np.ndarray]:
    """Per item: refused by the reject class, and by the bundle's ``gate`` (the service's rules: ``score_feed``)."""
    scores = score_feed(predictor, feed, task)
    reject = scores.decided == task.index(task.reject) if task.reject else np.zeros(len(scores.decided), bool)
    return {"reject": reject, "gate": scores.gate_refuses(gate, predictor.precision)}


def shares(d: dict[str, np.ndarray], *, task_films: bool) -> dict[str, float]:
    """Share refused (task films) or share given a finding (non-task images) for each rule."""
    refused = {"reject class": d["reject"], "gate": d["gate"], "both": d["reject"] | d["gate"]}
    return {k: float(v.mean() if task_films else (~v).mean()) for k, v in refused.items()}


def evaluate(bundle: Path, held_out: dict[str, list[np.ndarray]], settings: Settings) -> dict[str, Any]:
    """Score the bundle's test split and the held-out non-task sets at each precision the bundle has."""
    meta = load_meta(bundle)
    task, splits = bundle_splits(bundle, settings)
    test = splits["test"]
    if task.reject is not None:
        test = test.subset(np.flatnonzero(test.labels != task.index(task.reject)))
    out: dict[str, Any] = {"task": task.name, "ood": meta.ood.model_dump() if meta.ood else None, "precisions": {}}
    gate = load_gate(bundle, meta.ood)  # read once: it holds both precisions' models
    for precision in ["fp32", *(["int8"] if meta.int8 is not None else [])]:
        predictor = BundlePredictor(bundle, precision=precision)
        result: dict[str, Any] = {"test_films": len(test)}
        d = decisions(predictor, gate, model_feed(predictor, test), task)
        result["test_refused"] = shares(d, task_films=True)
        result["test_refused_by_class"] = {
            name: {"n": int(mask.sum()), "refused": shares({k: v[mask] for k, v in d.items()}, task_films=True)}
            for name, mask in ((c, test.labels == task.index(c)) for c in task.clinical_classes)
            if mask.any()
        }
        for kind, images in held_out.items():
            if task.multiview:
                feeds = [predictor.preprocess_studies([{view: image} for image in images]) for view in task.views]
                parts = [decisions(predictor, gate, feed, task) for feed in feeds]
                d = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            else:
                d = decisions(predictor, gate, predictor.preprocess(images), task)
            result[kind] = {"n": len(d["gate"]), "finding": shares(d, task_films=False)}
        out["precisions"][precision] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=OUT / "ood-gate")
    parser.add_argument("--wrist-bundle", type=Path, default=None, help="Reuse this wrist bundle (its data dir).")
    parser.add_argument("--chest-bundle", type=Path, default=None, help="Reuse this chest bundle (its data dir).")
    parser.add_argument("--only", choices=["wrist", "chest"], default=None, help="Train/measure one task only.")
    parser.add_argument(
        "--rebuild-gate", action="store_true", help="Build the reused bundles' gates again with this code first."
    )
    parser.add_argument("--finetune-epochs", type=int, default=None, help="Override the recipes' fine-tune epochs.")
    parser.add_argument("--samples-per-epoch", type=int, default=None, help="Override the recipes' epoch size.")
    args = parser.parse_args()
    overrides = {
        k: v
        for k, v in {"finetune_epochs": args.finetune_epochs, "samples_per_epoch": args.samples_per_epoch}.items()
        if v is not None
    }
    needed = [SHARED_DATA / "fracatlas", SHARED_DATA / "cxr-real", SHARED_DATA / "kermany-train"]
    if not all(p.is_dir() for p in needed):
        print(f"skipped: real data not found under {SHARED_DATA} (needs fracatlas, cxr-real, kermany-train)")
        return
    settings = Settings(data_dir=args.data_dir)
    timing: dict[str, float] = {}
    bundles: dict[str, Path] = {}
    added, wrist_rejects = None, None
    # the order a user would take: wrist films first, so the chest import's defaults find them; then the wrist
    # set again, so its import finds the chest films
    if not args.wrist_bundle and args.only != "chest":
        import_wrist_set(settings)
    if args.only != "wrist":
        if args.chest_bundle:
            bundles["chest"] = args.chest_bundle
        else:
            bundles["chest"], timing["chest_import_and_train_s"], added = train_chest(settings, overrides)
    elif not args.wrist_bundle:
        import_chest_set(settings)  # the wrist import's defaults add the chest films in the store to 'unknown'
    if args.only != "chest":
        if args.wrist_bundle:
            bundles["wrist"] = args.wrist_bundle
        else:
            bundles["wrist"], timing["wrist_import_and_train_s"], wrist_rejects = train_wrist(settings, overrides)

    for name, bundle in bundles.items():
        if args.rebuild_gate:
            rebuild_gate(bundle, settings)
        if name == "wrist" and wrist_rejects is None:
            wrist_rejects = reject_sources(bundle, settings)
        if name == "chest" and added is None:
            added = other_task_films(bundle, settings)
    rng = np.random.default_rng(2024)
    sources = photo_sources()
    seen = trained_on(settings)
    common = {
        **other_body_parts(rng, seen),
        "photos": photos(rng, sources),
        "screenshots": [screenshot(rng) for _ in range(SCREENSHOTS)],
    }
    trained = {
        "chest": "cxr-real + kermany-train with the chest import's defaults (400 generated non-X-rays; the wrist "
        "data set's films in the store added to 'unknown': "
        f"{added if added is not None else 'n/a (reused bundle)'}), chest recipe",
        "wrist": "FracAtlas hand/wrist films (`import_fracatlas(region='hand', other_regions=['leg'])`: the import's "
        f"defaults but hip and shoulder held out; 'unknown' by source: {wrist_rejects or 'n/a (reused bundle)'}), "
        f"wrist recipe{'; gate rebuilt with this code on the reused bundle' if args.rebuild_gate else ''}",
    }
    for name, bundle in bundles.items():
        held_out = dict(common)
        if name == "wrist":
            held_out = {
                "chest films in no wrist data set (cxr-real, kermany)": chest_films(rng, seen_wrist(settings)),
                **held_out,
            }
        started = time.perf_counter()
        result = evaluate(bundle, held_out, settings)
        timing[f"{name}_evaluation_s"] = time.perf_counter() - started
        md = section(name, result, trained[name], overrides, sources, timing)
        write_result(
            f"ood_gate_{name}",
            {"result": result, "timing": timing, "photo_sources": sorted(sources), "bundle": bundle},
            command=f"python -m benchmarks.ood_gate --only {name}",
            markdown=md,
        )
        print(md)


def pct(v: float) -> str:
    """A share as a percentage with one decimal."""
    return f"{100 * v:.1f}%"


def section(
    name: str,
    result: dict[str, Any],
    trained: str,
    overrides: dict[str, Any],
    sources: dict[str, np.ndarray],
    timing: dict[str, float],
) -> str:
    """The task's section of docs/BENCHMARKS.md: how it was trained, the gate, and the table of shares."""
    rows = []
    for precision, p in result["precisions"].items():
        t = p["test_refused"]
        rows.append(
            f"| {name} {precision} | real {name} test films refused (n={p['test_films']}) | "
            f"{pct(t['reject class'])} | {pct(t['gate'])} | {pct(t['both'])} |"
        )
        for cls, c in p["test_refused_by_class"].items():
            r = c["refused"]
            rows.append(
                f"| {name} {precision} | &nbsp;&nbsp;of them {cls} (n={c['n']}) | {pct(r['reject class'])} | "
                f"{pct(r['gate'])} | {pct(r['both'])} |"
            )
        for kind, v in p.items():
            if isinstance(v, dict) and "finding" in v:
                f = v["finding"]
                rows.append(
                    f"| {name} {precision} | {kind} given a finding (n={v['n']}) | {pct(f['reject class'])} | "
                    f"{pct(f['gate'])} | {pct(f['both'])} |"
                )
    ood = result["ood"]
    gate = (
        f"{ood['method']}, thresholds {ood['thresholds']}, validation refused {ood['validation_refused']} of "
        f"{ood['counts']['validation_items']}"
        if ood
        else "none"
    )
    return (
        f"## Refusing what is not a {name} film: reject class, out-of-distribution gate, both\n\n"
        f"Model: {trained}. Recipe overrides: {overrides or 'none'}. Gate: {gate}.\n"
        f"Held-out sets no training or threshold saw; photos are crops of {len(sources)} shipped photographs "
        f"({', '.join(sorted(sources))}); screenshots are rendered UI images; a multi-view model gets each image "
        "as each view (one trial per view). Targets: at most 1% of non-task images get a finding, at most 1% of "
        "real task films refused.\n"
        f"Time (s): {', '.join(f'{k} {v:.0f}' for k, v in timing.items())}.\n\n"
        "| model | measure | reject class alone | gate alone | both (served) |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
    )


if __name__ == "__main__":
    main()
